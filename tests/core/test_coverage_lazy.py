"""Lazy coverage volumes equal the dense ones they stand for."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_patchwork as pw
from napari_patchwork.core.samplers.coverage import (
    LocationCoverage,
    empirical_coverage,
    expected_coverage,
    uniform_maps,
)


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 24)] * 3), data=st.data())
def test_uniform_maps_equal_the_sampler_and_expected_coverage(shape, data):
    patch = tuple(data.draw(st.integers(1, s)) for s in shape)
    subject = pw.Subject(t1=pw.ScalarImage(torch.zeros(1, *shape)))
    dense = pw.UniformSampler(subject, patch, 5).get_probability_map(subject)
    probability, coverage = uniform_maps(shape, patch, 5)
    assert np.allclose(np.asarray(probability), dense.numpy(), atol=1e-7)
    assert np.allclose(np.asarray(coverage), expected_coverage(dense, patch, 5).numpy(), rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 20)] * 3), seed=st.integers(0, 1000), data=st.data())
def test_location_coverage_equals_the_dense_one_in_any_region(shape, seed, data):
    patch = tuple(data.draw(st.integers(1, s)) for s in shape)
    subject = pw.Subject(t1=pw.ScalarImage(torch.zeros(1, *shape)))
    locations = list(pw.UniformSampler(subject, patch, 7, seed=seed).locations(subject, 7))
    dense = empirical_coverage(locations, shape).numpy()
    lazy = LocationCoverage(locations, shape)
    axis = data.draw(st.integers(0, 2))
    index = data.draw(st.integers(0, shape[axis] - 1))
    key = tuple(index if a == axis else slice(None) for a in range(3))
    assert np.array_equal(lazy[key], dense[key])
    assert np.array_equal(np.asarray(lazy), dense)
