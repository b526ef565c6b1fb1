"""StopMatcher: stop strings found across chunk boundaries, never shown, not even in part."""

from __future__ import annotations

import itertools

import pytest

from edge_qwen.runtime.text.stopping import StopMatcher


def run(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    shown: list[str] = []
    for chunk in chunks:
        text, stopped = matcher.push(chunk)
        shown.append(text)
        if stopped:
            return "".join(shown), True
    return "".join(shown) + matcher.flush(), False


TEXT = "The answer is 42.\nUser: thanks\nmore"


def test_stop_split_at_every_position_of_two_chunks() -> None:
    for cut in range(len(TEXT) + 1):
        assert run(["\nUser:"], [TEXT[:cut], TEXT[cut:]]) == ("The answer is 42.", True), cut


def test_stop_split_at_every_pair_of_positions_of_three_chunks() -> None:
    for a, b in itertools.combinations(range(len(TEXT) + 1), 2):
        chunks = [TEXT[:a], TEXT[a:b], TEXT[b:]]
        assert run(["\nUser:"], chunks) == ("The answer is 42.", True), (a, b)


def test_one_character_chunks_never_leak_part_of_the_stop() -> None:
    matcher = StopMatcher(["\nUser:"])
    shown = ""
    for char in TEXT:
        text, stopped = matcher.push(char)
        shown += text
        assert not shown.endswith("\n"), "a possible stop prefix was shown"
        if stopped:
            break
    assert shown == "The answer is 42."


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    matcher = StopMatcher(["\nUser:"])
    assert matcher.push("Hello\nUs") == ("Hello", False)
    assert matcher.push("ually fine") == ("\nUsually fine", False)
    assert matcher.flush() == ""


def test_flush_releases_a_held_prefix_at_the_end_of_generation() -> None:
    matcher = StopMatcher(["</answer>"])
    assert matcher.push("42</ans") == ("42", False)
    assert matcher.flush() == "</ans"
    assert not matcher.stopped


def test_earliest_of_several_stops_wins_and_is_reported() -> None:
    matcher = StopMatcher(["STOP", "\n\n"])
    assert matcher.push("a\n\nb STOP") == ("a", True)
    assert matcher.matched == "\n\n"


def test_after_a_stop_everything_is_dropped() -> None:
    matcher = StopMatcher(["."])
    assert matcher.push("one. two") == ("one", True)
    assert matcher.push("three") == ("", True)
    assert matcher.flush() == ""


@pytest.mark.parametrize("stops", [[], [""]])
def test_no_stops_passes_text_through_unchanged(stops: list[str]) -> None:
    assert run(stops, ["a", "b\n", "c"]) == ("ab\nc", False)


def test_a_lone_string_is_one_stop_not_one_per_character() -> None:
    assert run("ab", ["xa", "by"]) == ("x", True)  # type: ignore[arg-type]


def test_overlapping_prefixes_find_the_stop() -> None:
    for cut in range(6):
        assert run(["aab"], ["xaaab"[:cut], "xaaab"[cut:]]) == ("xa", True)


def test_a_long_stop_string_costs_its_length_not_its_square() -> None:
    stop = "ab" * 256  # 512 characters, the longest a request may send
    matcher = StopMatcher([stop])
    assert not hasattr(matcher, "_prefixes")  # no table of its 511 prefixes (130k characters)
    shown, stopped = matcher.push("x" + stop[:300])
    assert (shown, stopped) == ("x", False)  # the start of the stop is held back
    assert matcher.push(stop[300:] + "tail") == ("", True)
    again = StopMatcher(["aab"])
    assert again.push("aaa") == ("a", False) and again.push("b!") == ("", True)  # overlapping starts


def test_requests_may_carry_a_bounded_number_and_length_of_stop_strings() -> None:
    from edge_qwen.errors import ConfigError
    from edge_qwen.runtime.presets import MAX_STOP_CHARS, MAX_STOPS, SamplingParams

    SamplingParams(stop=tuple("x" * MAX_STOP_CHARS for _ in range(MAX_STOPS)))
    with pytest.raises(ConfigError, match=f"at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS}"):
        SamplingParams(stop=("x",) * (MAX_STOPS + 1))
    with pytest.raises(ConfigError, match="stop must be"):
        SamplingParams(stop="a" * 90_000)
