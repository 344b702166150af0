import pytest
from stepgym.envs import parse_tagged_action, strip_thinking


@pytest.mark.parametrize(
    ("text", "tag", "content"),
    [
        ("<action>go to desk 1</action>", "action", "go to desk 1"),
        ("I should look.\n<action>  look \n</action>", "action", "look"),
        ("<think>maybe <action>x</action></think><action>take mug 1</action>", "action", "take mug 1"),
        ("<search>capital of France</search>", "search", "capital of France"),
        ("reason <answer>Paris</answer> trailing", "answer", "Paris"),
    ],
)
def test_valid(text, tag, content):
    p = parse_tagged_action(text, ("action", "search", "answer"))
    assert (p.tag, p.content, p.valid) == (tag, content, True)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no complete"),
        ("<action>unclosed", "no complete"),
        ("<search>a</search><answer>b</answer>", "found 2 actions"),
        ("<answer>   </answer>", "tag is empty"),
        ("<think>only thinking <answer>x</answer>", "no complete"),
    ],
)
def test_invalid(text, error):
    p = parse_tagged_action(text, ("search", "answer"))
    assert not p.valid and p.tag is None and error in p.error


def test_strip_thinking():
    assert strip_thinking("a<think>b</think>c<think>d") == "ac"
