"""Tests of the replay buffer, the trainer's batch mixing and the re-weighting diagnostics."""

import io
import math

import pytest
import torch

from r2vpo_ascend.replay import ReplayBuffer, Rollout, replay_count, replay_metrics


def rollout(version, group_id=0, length=3, reward=1.0):
    return Rollout(prompt_ids=[1, 2], response_ids=list(range(length)),
                   old_log_probs=torch.full((length,), -0.5), reward=reward, advantage=reward - 0.5,
                   version=version, group_id=group_id, extras={"answer": "4"})


def ids(rollouts):
    return [r.group_id for r in rollouts]


def test_fifo_capacity_eviction():
    buffer = ReplayBuffer(capacity=3, max_staleness=10)
    buffer.add([rollout(0, group_id=i) for i in range(2)])
    buffer.add([rollout(1, group_id=i) for i in range(2, 5)])
    assert len(buffer) == 3 and ids(buffer) == [2, 3, 4]  # the oldest two went first


def test_staleness_eviction():
    buffer = ReplayBuffer(capacity=100, max_staleness=2)
    for version in range(5):
        buffer.add([rollout(version, group_id=version), rollout(version, group_id=10 + version)])
    assert buffer.evict_stale(current_version=5) == 6       # staleness 3, 4, 5 > 2
    assert sorted(ids(buffer)) == [3, 4, 13, 14]
    assert sorted(r.staleness(5) for r in buffer) == [1, 1, 2, 2]
    # sample() never returns a stale sample
    assert ids(buffer.sample(10, current_version=6)) in ([4, 14], [14, 4])  # version 3 is now stale
    assert len(buffer) == 2


def test_sample_without_replacement_and_all_when_short():
    buffer = ReplayBuffer(capacity=50, max_staleness=3)
    buffer.add([rollout(0, group_id=i) for i in range(20)])
    sample = buffer.sample(8, current_version=1)
    assert len(sample) == 8 and len(set(ids(sample))) == 8
    assert sorted(ids(buffer.sample(30, current_version=1))) == list(range(20))
    assert buffer.sample(0, current_version=1) == []
    assert len(buffer) == 20  # sampling does not remove
    with pytest.raises(ValueError):
        buffer.sample(-1, current_version=1)


def test_sampling_is_seeded_and_resumes_identically():
    def filled(seed):
        buffer = ReplayBuffer(capacity=64, max_staleness=5, seed=seed)
        buffer.add([rollout(v, group_id=100 * v + i) for v in range(3) for i in range(10)])
        return buffer

    a, b = filled(0), filled(0)
    assert ids(a.sample(5, 3)) == ids(b.sample(5, 3))
    assert ids(filled(1).sample(5, 3)) != ids(filled(0).sample(5, 3))

    state = a.state_dict()
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    restored = ReplayBuffer(capacity=64, max_staleness=5, seed=123)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    assert len(restored) == len(a)
    first = restored.sample(7, 4)
    assert ids(first) == ids(a.sample(7, 4))
    assert ids(restored.sample(7, 4)) == ids(a.sample(7, 4))
    original = next(r for r in a if r.group_id == first[0].group_id)
    assert first[0].response_ids == original.response_ids and first[0].extras == {"answer": "4"}
    assert torch.equal(first[0].old_log_probs, original.old_log_probs)
    # a checkpoint written while rollouts still had the (never set) `prompt_index` field loads
    old = dict(state, rollouts=[dict(r, prompt_index=None) for r in state["rollouts"]])
    restored.load_state_dict(old)
    assert len(restored) == len(a)


def test_bad_arguments():
    for kwargs in (dict(capacity=0, max_staleness=1), dict(capacity=4, max_staleness=-1),
                   dict(capacity=2.5, max_staleness=1)):
        with pytest.raises(ValueError):
            ReplayBuffer(**kwargs)
    with pytest.raises(TypeError):
        ReplayBuffer(4, 1).add([{"not": "a rollout"}])


@pytest.mark.parametrize("replay_ratio, buffered, expected_replayed", [
    (0.0, 50, 0), (0.5, 50, 8), (0.2, 50, 2), (0.75, 50, 24), (0.75, 5, 5),
])
def test_replay_count_and_sample(replay_ratio, buffered, expected_replayed):
    buffer = ReplayBuffer(capacity=100, max_staleness=4)
    buffer.add([rollout(0, group_id=1000 + i) for i in range(buffered)])
    replayed = buffer.sample(replay_count(8, replay_ratio), current_version=1)  # the trainer's two calls
    assert len(replayed) == expected_replayed and len({id(r) for r in replayed}) == expected_replayed
    with pytest.raises(ValueError, match="replay_ratio"):
        replay_count(8, 1.0)


def test_trainer_never_replays_a_fresh_sample_in_its_own_step(tmp_path):
    """The trainer's real path: replayed samples are drawn before the fresh ones enter the buffer,
    so every update batch is this step's fresh rollouts plus strictly older ones."""
    from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
    cfg = R2VPOConfig(model="tiny", dataset="arithmetic", dataset_size=32, prompts_per_step=2, num_generations=2,
                      max_new_tokens=2, sft_steps=0, eval_every=0, steps=3, replay_ratio=0.5, max_staleness=4,
                      output_dir=str(tmp_path / "run"), progress_bar="off", log_every=0)
    trainer = R2VPOTrainer(config=cfg)
    update, seen = trainer.updater.update, []

    def recording_update(batch, *, current_version, positions=None):
        seen.append((current_version, [r.staleness(current_version) for r in batch]))
        return update(batch, current_version=current_version, positions=positions)
    trainer.updater.update = recording_update
    trainer.train()
    assert [version for version, _ in seen] == [0, 1, 2]
    for version, staleness in seen:
        assert staleness[:4] == [0, 0, 0, 0]                   # this step's 2 × 2 fresh rollouts ...
        assert all(s >= 1 for s in staleness[4:])              # ... and only older ones after them
        assert len(staleness) == 4 + min(4, 4 * version)       # replay_count(4, 0.5) = 4, once buffered


# ----------------------------------------------------------------------------------------
# Re-weighting diagnostics
# ----------------------------------------------------------------------------------------
def test_replay_metrics_ess_equals_token_count_for_unit_ratios():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    metrics = replay_metrics(torch.ones(3, 4), torch.tensor([1.0, -1.0, 0.5]), mask,
                             torch.tensor([0, 1, 6]), lam=1.0, center_value=1.0)
    assert metrics["replay/ess"] == pytest.approx(9.0) and metrics["replay/ess_frac"] == pytest.approx(1.0)
    assert metrics["replay/staleness_0/ess"] == pytest.approx(3.0)
    assert metrics["replay/staleness_1/tokens"] == 2.0
    assert metrics["replay/staleness_ge4/ess"] == pytest.approx(4.0)
    assert "replay/staleness_2/ess" not in metrics  # empty bucket left out
    assert metrics["replay/staleness_mean"] == pytest.approx(7 / 3)
    assert metrics["replay/replayed_frac"] == pytest.approx(2 / 3)
    for bucket in ("0", "1", "ge4"):
        assert metrics[f"replay/staleness_{bucket}/ratio_var"] == 0.0
        assert metrics[f"replay/staleness_{bucket}/eff_adv_flip_frac"] == 0.0


def test_replay_metrics_known_ratios():
    ratio = torch.tensor([[1.0, 1.0, 9.0], [2.0, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])      # 9.0 and 7.0 are padding
    adv = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]])
    metrics = replay_metrics(ratio, adv, mask, torch.tensor([0, 3]), lam=1.0, center_value=1.0)
    stale = "replay/staleness_3"
    assert metrics[f"{stale}/ratio_mean"] == pytest.approx(1.25)
    assert metrics[f"{stale}/ratio_var"] == pytest.approx((1.0 + 0.25) / 2)   # around c = 1
    assert metrics[f"{stale}/ess"] == pytest.approx(2.5 ** 2 / 4.25)
    assert metrics[f"{stale}/ess_frac"] == pytest.approx(2.5 ** 2 / 4.25 / 2)
    # effective advantages: 1 − 2·(2 − 1) = −1 (flipped), −1 − 2·(0.5 − 1) = 0 (not a strict flip)
    assert metrics[f"{stale}/eff_adv_flip_frac"] == pytest.approx(0.5)
    assert metrics[f"{stale}/clip_frac"] == pytest.approx(1.0)  # PPO would silence both tokens
    assert metrics["replay/ess"] == pytest.approx(4.5 ** 2 / 6.25)
    assert metrics["replay/staleness_0/clip_frac"] == 0.0


def test_replay_metrics_center_defaults_to_batch_mean_and_validates():
    ratio = torch.tensor([[1.0, 3.0]])
    metrics = replay_metrics(ratio, torch.tensor([1.0]), torch.ones(1, 2), torch.tensor([0]), lam=0.0)
    assert metrics["replay/staleness_0/ratio_var"] == pytest.approx(1.0)  # around the mean 2
    with pytest.raises(ValueError, match="staleness"):
        replay_metrics(ratio, torch.tensor([1.0]), torch.ones(1, 2), torch.tensor([0, 1]), lam=0.0)
    with pytest.raises(ValueError, match="staleness"):
        replay_metrics(ratio, torch.tensor([1.0]), torch.ones(1, 2), torch.tensor([-1]), lam=0.0)
    assert all(math.isfinite(v) for v in metrics.values())
