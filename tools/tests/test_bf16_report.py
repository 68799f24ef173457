"""make bf16-report's page: the goals met or missed from the measured differences, and the fixture clips whose
bf16 tokens differ, listed."""
import pytest

from acm_tools import bf16_report


def result(fashion_diff=0.0002, wer_bf16=0.2540, differ=()):
    return dict(date='2026-11-30', commit='abc', cpu='CPU', bf16='avx512_bf16 (LIBXSMM 1.17, cpx)',
                fashion=[dict(name='teacher', f32=0.9025, bf16=0.9025 + fashion_diff, fraction=1.0,
                              changed_decisions=0.0, changed_predictions=0.0011, images=10000,
                              difference_points=100 * fashion_diff)],
                speech=[dict(name='dense', clips=300, f32=0.2500, bf16=wer_bf16, clips_differ=7,
                             difference_points=100 * (wer_bf16 - 0.25), interval_points=[-0.5, 1.25],
                             fallbacks_f32=4, fallbacks_bf16=5, loops_f32=0, loops_bf16=0, steady_clips=300,
                             steady_f32=0.2500, steady_bf16=wer_bf16)],
                fixtures=[dict(name='dense', clips=12, differ=list(differ))])


def test_page_says_met_within_the_goals():
    """Should say met where bf16 is within 0.15 pt (Fashion-MNIST) and 0.3 pt (WER) of f32."""
    page = bf16_report.markdown(result())
    assert '| teacher | 1.000 | 90.25% | 90.27% | +0.02 pt | met | 0.000% | 0.11% |' in page
    assert ('| dense | 25.00% | 25.40% | +0.40 pt | -0.50 to +1.25 pt | missed | 7 | 4 / 5 | 0 / 0 | 25.00% / 25.40% '
            '(300 clips) |') in page
    assert '| dense | 12 | 12 |' in page and 'Where bf16' not in page


def test_page_says_missed_and_lists_differing_clips():
    """Should say missed where bf16 is worse beyond the goal, tell a difference in bf16's favour apart, and list each
    fixture clip whose bf16 tokens differ."""
    page = bf16_report.markdown(result(fashion_diff=-0.002, wer_bf16=0.2520,
                                       differ=[dict(clip='espeak_us_fox', f32=' a b', bf16=' a c')]))
    assert '-0.20 pt | missed' in page and '+0.20 pt | -0.50 to +1.25 pt | met' in page
    assert '| dense | 12 | 11 |' in page
    assert '- dense, espeak_us_fox: f32 "a b"; bf16 "a c"' in page
    better = bf16_report.markdown(result(fashion_diff=0.002, wer_bf16=0.2460))
    assert "+0.20 pt | outside, in bf16's favour" in better and "-0.40 pt | -0.50 to +1.25 pt | outside, in bf16's favour" in better


def test_page_gives_the_wer_without_looping_clips():
    """Should count the clips decoded again and those that still loop in each precision, and give both WERs over the
    clips that loop in neither, so that a goal missed on one clip's loop shows as such."""
    res = result(wer_bf16=0.2660)
    res['speech'][0].update(loops_f32=2, loops_bf16=3, steady_clips=297, steady_f32=0.2415, steady_bf16=0.2392)
    page = bf16_report.markdown(res)
    assert ('| dense | 25.00% | 26.60% | +1.60 pt | -0.50 to +1.25 pt | missed | 7 | 4 / 5 | 2 / 3 | 24.15% / 23.92% '
            '(297 clips) |') in page


def test_difference_interval_is_a_paired_bootstrap():
    """Should be 0 to 0 when both precisions make the same errors, and cover the difference of a uniform change."""
    rows = [dict(text='the cat sat on the mat'), dict(text='a dog ran')] * 50
    same = ['the cat sat on a mat', 'a dog ran'] * 50
    assert bf16_report.difference_interval(rows, same, same) == [0.0, 0.0]
    worse = ['the cat sat on a mat', 'a dog'] * 50  # one more error in every second clip: +100/9 points
    low, high = bf16_report.difference_interval(rows, same, worse)
    assert low < 100 / 9 < high and low > 0


def test_write_refuses_without_the_validation_set(tmp_path):
    """Should refuse to rewrite the page when the validation clips are missing (the page would lose its Whisper WER
    section), before running anything."""
    with pytest.raises(SystemExit, match='missing'):
        bf16_report.main(['--write', '--manifest', str(tmp_path / 'val.jsonl'), '--bin', '/nonexistent'])
