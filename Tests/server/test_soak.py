"""A short soak (Tests/server/soak.py; `make soak` runs the long one): a minute of mixed image and speech traffic at
concurrency 64, with malformed requests and clients that leave mid-request."""
import soak


def test_short_soak():
    """Should give every request its intended answer, return to its descriptors at the end, and not grow: RSS within
    10% over 40 s (a smoke test for leaks of bodies or connections, which grow it by far more; the 5% goal and p99
    stability are judged by the 30-minute `make soak`: a minute holds too few speech requests)."""
    report = soak.soak(seconds=60, warmup=20, concurrency=64, interval=2)
    goals = report['goals']
    assert goals['only_intended_answers'], report['unexpected'][:10]
    assert goals['fds_back_to_baseline'], (report['baseline_fds'], report['final_fds'])
    assert report['rss_growth'] < 0.10, report['rss_growth']
    assert report['requests']['images'] > 1000 and report['requests']['audio'] > 8, report['requests']
    assert report['requests']['malformed'] > 0 and report['requests']['abandoned'] > 0, report['requests']
