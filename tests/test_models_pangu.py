"""openPangu-Embedded without its modeling code: the Llama mapping, strict weight loading, the
load report, `pangu-tiny`, and the presets."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from r2vpo_ascend.models.loading import HOW_MAPPED, ModelLoadError, load_local_checkpoint, load_model_and_tokenizer
from r2vpo_ascend.models.pangu import (PANGU_ARCHITECTURE, build_pangu_tiny_model, is_pangu_embedded,
                                       llama_config_from_pangu, pangu_tiny_config)
from r2vpo_ascend.models.presets import MODEL_PRESETS, check_against_preset, get_preset
from r2vpo_ascend.models.tokenizer import build_char_tokenizer

VOCAB = 64


def pangu_config_json(**overrides) -> dict:
    """A config.json in openPangu-Embedded's own field names (as the published 7B one), tiny sizes."""
    cfg = {
        "architectures": [PANGU_ARCHITECTURE], "model_type": "PanguEmbedded",
        "auto_map": {"AutoConfig": "configuration_openpangu_dense.PanguEmbeddedConfig",
                     "AutoModelForCausalLM": "modeling_openpangu_dense.PanguEmbeddedForCausalLM"},
        "bias": True, "attention_dropout": 0.0, "bos_token_id": 1, "pad_token_id": 0, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 160, "max_position_embeddings": 256,
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 16000000.0, "tie_word_embeddings": False, "torch_dtype": "float32", "vocab_size": VOCAB,
        "initializer_range": 0.02, "use_cache": True, "transformers_version": "4.53.2",
    }
    cfg.update(overrides)
    return cfg


def direct_llama(seed=0) -> LlamaForCausalLM:
    """The reference: a Llama built by hand with exactly the Pangu features (biases on q/k/v/o only)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=16000000.0,
        attention_bias=True, mlp_bias=False, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
        eos_token_id=2))
    with torch.no_grad():  # biases start at zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


def write_checkpoint(directory, model, config, drop=()):
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k not in drop}
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_pangu_parameter_names_are_llamas():
    names = set(direct_llama().state_dict())
    # What modeling_openpangu_dense.py creates: Llama's modules, with biases on all four attention projections.
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"model.layers.0.self_attn.{proj}.bias" in names
    assert not any(n.startswith("model.layers.0.mlp") and n.endswith("bias") for n in names)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= names


def test_mapped_checkpoint_forward_equals_direct_llama(tmp_path):
    ref = direct_llama()
    ckpt = write_checkpoint(tmp_path / "pangu", ref, pangu_config_json())
    loaded = load_local_checkpoint(ckpt)
    assert loaded.how == HOW_MAPPED
    assert loaded.message == f"loaded {ckpt} as LlamaForCausalLM (mapped from PanguEmbeddedForCausalLM)"
    model = loaded.model.eval()
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.attention_bias is True and model.config.mlp_bias is False
    assert model.config.rope_parameters["rope_theta"] == 16000000.0 and model.config.rms_norm_eps == 1e-5
    ids = torch.randint(0, VOCAB, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_load_model_and_tokenizer_reports_the_path(tmp_path, capsys, monkeypatch):
    tok = build_char_tokenizer()
    ref = direct_llama()
    ref.resize_token_embeddings(len(tok))
    ckpt = write_checkpoint(tmp_path / "pangu", ref, pangu_config_json(vocab_size=len(tok)))
    tok.save_pretrained(ckpt)
    model, tokenizer = load_model_and_tokenizer(str(ckpt))
    assert isinstance(model, LlamaForCausalLM) and tokenizer.padding_side == "left"
    expected = f"[model] loaded {ckpt} as LlamaForCausalLM (mapped from PanguEmbeddedForCausalLM)"
    assert expected in capsys.readouterr().out
    # Only rank 0 reports, and the rank is the caller's argument: RANK in the environment is not read.
    monkeypatch.setenv("RANK", "3")
    load_model_and_tokenizer(str(ckpt), rank=0)
    assert expected in capsys.readouterr().out
    load_model_and_tokenizer(str(ckpt), rank=1)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("change, needle", [
    ({"sliding_window": 4096}, "no LlamaConfig equivalent"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"attention_bias": False}, "disagrees"),
    ({"pretraining_tp": 2}, "pretraining_tp"),
])
def test_fields_without_a_llama_equivalent_are_refused(change, needle):
    with pytest.raises(ModelLoadError, match=needle):
        llama_config_from_pangu(pangu_config_json(**change))


def test_fields_left_out_take_pangus_defaults_not_llamas():
    cfg = pangu_config_json()
    for key in ("bias", "rope_theta", "rms_norm_eps", "max_position_embeddings", "eos_token_id"):
        del cfg[key]
    llama = llama_config_from_pangu(cfg)
    assert llama.attention_bias is True and llama.rope_parameters["rope_theta"] == 16000000.0
    assert (llama.rms_norm_eps, llama.max_position_embeddings, llama.eos_token_id) == (1e-5, 32768, 45892)


def test_missing_weights_are_refused(tmp_path):
    ckpt = write_checkpoint(tmp_path / "partial", direct_llama(), pangu_config_json(), drop=("lm_head.weight",))
    with pytest.raises(ModelLoadError, match="lm_head.weight"):
        load_local_checkpoint(ckpt)
    (tmp_path / "nosafe").mkdir()
    (tmp_path / "nosafe" / "config.json").write_text(json.dumps(pangu_config_json()))
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_local_checkpoint(tmp_path / "nosafe")


def test_bias_false_maps_to_no_attention_bias():
    assert llama_config_from_pangu(pangu_config_json(bias=False)).attention_bias is False
    assert is_pangu_embedded({"model_type": "openpangu_dense"}) and not is_pangu_embedded({"model_type": "llama"})


def test_pangu_tiny_is_the_pangu_architecture():
    tok = build_char_tokenizer()
    model, tokenizer = load_model_and_tokenizer("pangu-tiny", seed=3)
    again = build_pangu_tiny_model(tok, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    cfg = model.config
    assert (cfg.attention_bias, cfg.mlp_bias, cfg.tie_word_embeddings) == (True, False, False)
    assert cfg.num_attention_heads // cfg.num_key_value_heads == 2 and cfg.head_dim == 32
    assert cfg.rope_parameters["rope_theta"] == pangu_tiny_config(10)["rope_theta"]
    out = model(**tokenizer(["12+7="], return_tensors="pt"))
    assert out.logits.shape[-1] == len(tokenizer)


def test_presets_and_preset_names_as_model():
    p7 = MODEL_PRESETS["openpangu-embedded-7b"]
    assert (p7.num_layers, p7.num_attention_heads, p7.num_key_value_heads) == (34, 32, 8)
    assert p7.hidden_size == 4096 and p7.intermediate_size == 12800  # the card's "12800" is the MLP width
    p1 = get_preset("openPangu-Embedded-1B")
    assert (p1.num_layers, p1.hidden_size, p1.num_attention_heads, p1.num_key_value_heads) == (26, 1536, 12, 6)
    ds = MODEL_PRESETS["deepseek-r1-distill-qwen-1.5b"]
    assert (ds.architecture, ds.num_layers, ds.hidden_size, ds.num_key_value_heads, ds.vocab_size) == \
        ("Qwen2ForCausalLM", 28, 1536, 2, 151936)
    for preset in MODEL_PRESETS.values():
        assert preset.hidden_size % preset.num_attention_heads == 0 and preset.hf_repo_id.count("/") == 1
    assert check_against_preset({"hidden_size": 12800, "num_hidden_layers": 34}, p7) == \
        ["hidden_size: config.json has 12800, preset openpangu-embedded-7b says 4096"]
    with pytest.raises(ModelLoadError, match="FreedomIntelligence/openPangu-Embedded-7B-V1.1"):
        load_model_and_tokenizer("openpangu-embedded-7b")


REMOTE_CONFIG = '''from transformers import LlamaConfig


class ToyRemoteConfig(LlamaConfig):
    model_type = "toy_remote_pangu"
'''
REMOTE_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_toy import ToyRemoteConfig


class ToyRemoteForCausalLM(LlamaForCausalLM):
    config_class = ToyRemoteConfig
'''


def test_trust_remote_code_uses_the_checkpoints_own_code(tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dmu
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # keep ~/.cache clean
    ref = direct_llama()
    cfg = pangu_config_json(model_type="toy_remote_pangu", attention_bias=True,
                            auto_map={"AutoConfig": "configuration_toy.ToyRemoteConfig",
                                      "AutoModelForCausalLM": "modeling_toy.ToyRemoteForCausalLM"})
    ckpt = write_checkpoint(tmp_path / "remote", ref, cfg)
    (ckpt / "configuration_toy.py").write_text(REMOTE_CONFIG)
    (ckpt / "modeling_toy.py").write_text(REMOTE_MODEL)
    loaded = load_local_checkpoint(ckpt, trust_remote_code=True)
    assert loaded.how == "remote_code" and type(loaded.model).__name__ == "ToyRemoteForCausalLM"
    assert loaded.message == f"loaded {ckpt} with its own modeling code (trust_remote_code)"
    assert load_local_checkpoint(ckpt).how == HOW_MAPPED  # without trust: the mapping, same weights
