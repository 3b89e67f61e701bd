"""packager.plan: segment plan, cutting and output-format rules."""

import itertools

import pytest

from packager import plan


def test_boundaries_on_grid_near_target() -> None:
    points = plan.boundaries(882000, 6.0, 44100)
    assert points[0] == 0 and points[-1] == 882000
    steps = {b - a for a, b in itertools.pairwise(points[:-1])}
    assert steps == {65 * plan.GRID}  # 6.037 s: the grid multiple nearest 6 s at 44.1 kHz
    assert all(p % plan.GRID == 0 for p in points[:-1])


@pytest.mark.parametrize("rate", [44100, 48000])
def test_boundaries_within_half_a_grid_step_of_target(rate: int) -> None:
    step = plan.boundaries(10**7, 6.0, rate)[1]
    assert abs(step / rate - 6.0) <= plan.GRID / rate / 2


def test_boundaries_short_track_is_one_segment() -> None:
    assert plan.boundaries(44100, 6.0, 44100) == [0, 44100]


def test_boundaries_rejects_empty() -> None:
    with pytest.raises(ValueError):
        plan.boundaries(0, 6.0, 44100)


def test_cut_aac_first_segment_carries_priming() -> None:
    total = 882000
    frames = -(-(total + plan.AAC_PRIMING) // plan.AAC_FRAME)
    durations = (plan.AAC_FRAME,) * frames
    points = plan.boundaries(total, 6.0, 44100)
    cuts = plan.cut(durations, points, 44100, 44100, plan.AAC_PRIMING)
    assert len(cuts) == len(points) - 1
    assert cuts[0].media_duration == points[1] + plan.AAC_PRIMING
    assert all(c.media_duration == points[1] for c in cuts[1:-1])
    assert sum(c.end_sample - c.first_sample for c in cuts) == frames
    assert [c.decode_time for c in cuts[1:]] == [p + plan.AAC_PRIMING for p in points[1:-1]]
    assert sum(c.presentation for c in cuts) == pytest.approx(total / 44100)


def test_cut_flac_at_double_rate_aligns_with_aac_plan() -> None:
    total_aac = 48000 * 20
    durations = (2 * plan.GRID,) * (2 * total_aac // (2 * plan.GRID)) + (2 * total_aac % (2 * plan.GRID),)
    points = plan.boundaries(total_aac, 6.0, 48000)
    cuts = plan.cut(durations, points, 48000, 96000, 0)
    assert [c.decode_time for c in cuts[1:]] == [2 * p for p in points[1:-1]]
    assert [round(c.presentation, 9) for c in cuts] == [round((b - a) / 48000, 9)
                                                        for a, b in itertools.pairwise(points)]


def test_split_indices_moves_to_next_sample_edge() -> None:
    assert plan.split_indices((1000, 1000, 1000), [0, 1500, 3000]) == [0, 2, 3]


@pytest.mark.parametrize(
    ("rate", "channels", "bits", "lossless", "expected"),
    [
        (44100, 2, 16, True, (44100, 44100, 16)),
        (48000, 1, 24, True, (48000, 48000, 24)),
        (96000, 2, 24, True, (48000, 96000, 24)),
        (192000, 2, 24, True, (48000, 96000, 24)),
        (176400, 2, 24, True, (44100, 88200, 24)),
        (8000, 1, 16, True, (48000, 48000, 16)),
        (22050, 2, 16, True, (44100, 44100, 16)),
        (44100, 6, 32, True, (44100, 44100, 24)),
        (44100, 2, None, False, (44100, 44100, 16)),
    ],
)
def test_output_format_rules(rate: int, channels: int, bits: int | None, lossless: bool,
                             expected: tuple[int, int, int]) -> None:
    fmt = plan.output_format(rate, channels, bits, lossless)
    assert (fmt.aac_rate, fmt.flac_rate, fmt.flac_bits) == expected
    assert fmt.flac_block * fmt.aac_rate == plan.GRID * fmt.flac_rate  # FLAC blocks sit on the grid


def test_target_duration_rounds_like_rfc8216() -> None:
    assert plan.target_duration([6.037, 6.4, 1.0]) == 6
    assert plan.target_duration([6.5]) == 7
    assert plan.target_duration([0.2]) == 1
