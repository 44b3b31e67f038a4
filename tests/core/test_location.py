import pytest

from napari_patchwork import PatchLocation


def test_fields_and_derived_indices():
    location = PatchLocation(index=(-2, 0, 5), size=(4, 6, 8), subject_index=3)
    assert location.index_ini == (-2, 0, 5)
    assert location.index_fin == (2, 6, 13)
    assert location.to_slices() == (slice(-2, 2), slice(0, 6), slice(5, 13))
    assert location.subject_index == 3
    assert location.center == (0, 3, 9)


def test_is_frozen_and_hashable():
    location = PatchLocation((0, 0, 0), (2, 2, 2))
    with pytest.raises(AttributeError):
        location.index = (1, 1, 1)  # type: ignore[misc]
    assert len({location, PatchLocation([0, 0, 0], [2, 2, 2])}) == 1


def test_scaled_halves_and_doubles():
    location = PatchLocation((8, 4, 0), (16, 16, 8))
    assert location.scaled(0.5) == PatchLocation((4, 2, 0), (8, 8, 4))
    assert location.scaled((2, 1, 0.5)) == PatchLocation((16, 4, 0), (32, 16, 4))
    assert location.scaled(0.5).scaled(2) == location


@pytest.mark.parametrize("factor", [0, -1, float("nan"), (1, 1), True])
def test_scaled_rejects_bad_factor(factor):
    with pytest.raises((ValueError, TypeError), match="factor"):
        PatchLocation((0, 0, 0), (2, 2, 2)).scaled(factor)


@pytest.mark.parametrize(
    ("index", "size", "match"),
    [
        ((0, 0), (1, 1, 1), "index"),
        ((0, 0, 0), (1, 0, 1), "size"),
        ((0.5, 0, 0), (1, 1, 1), "index"),
    ],
)
def test_rejects_bad_fields(index, size, match):
    with pytest.raises((TypeError, ValueError), match=match):
        PatchLocation(index, size)


def test_inside_and_intersects():
    location = PatchLocation((-1, 0, 0), (4, 4, 4))
    assert not location.inside((8, 8, 8))
    assert location.intersects((8, 8, 8))
    assert not PatchLocation((8, 0, 0), (4, 4, 4)).intersects((8, 8, 8))
