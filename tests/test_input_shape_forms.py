"""--input-shape as shapes get pasted: a bracketed list or tuple, or torch.Size(...), was 'expected
comma-separated integers'."""
import click
import pytest

from edgekit.cli.compress import _shape


@pytest.mark.parametrize("text", ["1,3,224,224", "1x3x224x224", "1 3 224 224", "[1, 3, 224, 224]",
                                  "(1, 3, 224, 224)", "torch.Size([1, 3, 224, 224])", " 1, 3, 224, 224, "])
def test_pasted_shapes_are_read(text):
    assert _shape(None, None, text) == (1, 3, 224, 224)


@pytest.mark.parametrize("text, words", [("[1,3", "expected comma-separated integers"),
                                         ("batch,3,8,8", "expected comma-separated integers"),
                                         ("1,,3", "expected comma-separated integers"),
                                         ("1,0,8,8", "dimensions must be positive")])
def test_other_text_is_refused(text, words):
    with pytest.raises(click.BadParameter, match=words):
        _shape(None, None, text)
