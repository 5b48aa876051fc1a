"""fastrnn.cells: the registry's own contracts (the cells' numbers are tested per cell)."""

import pytest

from fastrnn.cells import CELLS

OPTIONS = [(cell, option) for cell in CELLS.values() for option in cell.options]


@pytest.mark.parametrize("cell, option", OPTIONS, ids=[f"{c.name}-{o.name}" for c, o in OPTIONS])
def test_an_option_check_takes_what_it_returns(cell, option):
    """A layer stores checked values and fastrnn.torch re-checks them: a checker refusing its
    own output sent every patched cell of that kind to torch."""
    checked = option.check(option.default, option.name)
    assert option.check(checked, option.name) == checked
