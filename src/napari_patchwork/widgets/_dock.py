"""``DockContainer``: the base of the plugin's dock widgets, whose content scrolls.

napari docks a magicgui widget's ``.native``; for a ``Container(scrollable=True)`` that is the
inner widget, not its scroll area, so the dock's minimum height is the whole content's. Docks
stacked on one side of the window then add up: four docks on a 1000-pixel window made it 3094
pixels tall (measured 2026-12-07 under Xvfb), napari saved that geometry and the next start
opened off the screen. Handing napari the scroll area keeps each dock's minimum small: the
content scrolls and the window keeps its size.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QComboBox

MIN_HEIGHT = 150  # pixels: a dock's least height (its content scrolls within it)
MAX_MIN_WIDTH = 420  # pixels: the most a dock's content may ask for (wider content scrolls)
COMBO_CHARACTERS = 16  # a layer picker's least width, in characters: longer names are cut


class _FitWidth(QObject):
    """Keeps a scroll area at least as wide as its content's least width (plus the vertical
    bar, at most :data:`MAX_MIN_WIDTH`), re-read whenever the content's layout changes: the
    content then does not scroll sideways (the Sampler explorer's and Tiled inference's did
    by 2–21 pixels). Layer pickers ask for :data:`COMBO_CHARACTERS`, not their longest item:
    a 198-character layer name would otherwise widen the dock, and the window napari saves,
    by 1300 pixels."""

    def __init__(self, area: Any) -> None:
        super().__init__(area)
        self.area = area
        area.widget().installEventFilter(self)
        self.fit()

    def fit(self) -> None:
        area = self.area
        for combo in area.widget().findChildren(QComboBox):
            if combo.minimumContentsLength() != COMBO_CHARACTERS:
                combo.setSizeAdjustPolicy(
                    QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
                )
                combo.setMinimumContentsLength(COMBO_CHARACTERS)
                # Qt keeps the minimum size hint computed from the items before (measured):
                # an explicit minimum, from the new size hint, replaces it in layouts
                combo.setMinimumWidth(combo.sizeHint().width())
        bar = area.verticalScrollBar().sizeHint().width()
        least = area.widget().minimumSizeHint().width() + bar + 2 * area.frameWidth()
        least = min(least, MAX_MIN_WIDTH)
        if area.minimumWidth() != least:
            area.setMinimumWidth(least)

    def eventFilter(self, watched: Any, event: Any) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.LayoutRequest:
            self.fit()
        return False


class DockContainer(Container):
    """A vertical magicgui ``Container`` docked by its scroll area.

    Examples
    --------
    >>> from magicgui.widgets import Label
    >>> dock = DockContainer(widgets=[Label(value="a")])
    >>> type(dock.native).__name__, dock.native.widget() is dock.root_native_widget.widget()
    ('QScrollArea', True)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(scrollable=True, **kwargs)
        # a share of the side worth having when docks are added back to back (Qt gave the
        # later ones 89 pixels, two rows, in a user test); four fit a 900-pixel window
        self.native.setMinimumHeight(MIN_HEIGHT)
        # controls stay at the top of a tall dock (napari adds this stretch to the docks it
        # can see a layout in; a scroll area hides it)
        self.native.widget().layout().addStretch(1)
        self._fit_width = _FitWidth(self.native)

    @property
    def native(self) -> Any:
        """The scroll area (what napari docks), around the widget holding the layout."""
        return self.root_native_widget

    def append_qt(self, widget: Any) -> None:
        """Append a Qt widget (e.g. a matplotlib canvas) below the magicgui ones."""
        layout = self.native.widget().layout()
        layout.insertWidget(layout.count() - 1, widget, 1)  # before the stretch, growing
