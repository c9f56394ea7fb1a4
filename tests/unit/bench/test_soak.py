"""The soak's verdict (bench/soak.py): flat after warm-up, or not, from the samples alone."""

from __future__ import annotations

from bench.soak import verdict


def samples(records, rss, keys, replica_rss=None):
    replica_rss = replica_rss or [60.0] * len(records)
    return [{"t": 10.0 * n, "idempotency_records": r, "expiry_index": r,
             "switch_rss_mib": 50.0, "apps_rss_mib": {"app": m},
             "replicas": {"data": {"keys": k, "rss_mib": d}}}
            for n, (r, m, k, d) in enumerate(zip(records, rss, keys, replica_rss, strict=True))]


def test_state_that_levels_off_after_warm_up_is_flat():
    records = [100, 600, 1200, 1300, 1250, 1310, 1290, 1280, 1300]
    keys = [800, 2600, 3400, 3500, 3450, 3510, 3490, 3480, 3500]  # history window full, then flat
    judged = verdict(samples(records, [50.0] * 9, keys))
    assert judged["flat"] is True
    assert {j["series"] for j in judged["judged"]} >= {"replica_keys data", "replica_rss_mib data"}


def test_records_that_keep_growing_are_not_flat_and_say_which_series():
    records = [1000 * n for n in range(1, 10)]
    judged = verdict(samples(records, [50.0] * 9, [0] * 9))
    assert judged["flat"] is False
    assert {j["series"] for j in judged["judged"] if not j["flat"]} == {
        "idempotency_records", "expiry_index"}


def test_a_replica_whose_keys_or_memory_keep_growing_is_not_flat():
    growing_keys = verdict(samples([10] * 9, [50.0] * 9, list(range(0, 9000, 1000))))
    assert growing_keys["flat"] is False
    assert [j["series"] for j in growing_keys["judged"] if not j["flat"]] == ["replica_keys data"]
    growing_rss = verdict(samples([10] * 9, [50.0] * 9, [0] * 9,
                                  [60.0 + 5 * n for n in range(9)]))
    assert [j["series"] for j in growing_rss["judged"] if not j["flat"]] == [
        "replica_rss_mib data"]


def test_memory_growth_within_the_noise_floor_is_flat():
    rss = [50.0, 50.5, 51.0, 51.0, 51.5, 52.0, 52.0, 52.5, 53.0]  # +1.5 MiB: allocator slack
    assert verdict(samples([10] * 9, rss, [0] * 9))["flat"] is True


def test_too_few_samples_decide_nothing():
    assert verdict(samples([1, 2], [50.0, 50.0], [0, 0]))["flat"] is None
