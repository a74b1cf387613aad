"""The endpoint fits its GPU, checked at synth: vLLM reserves KV cache for one whole
max_model_len sequence at start and refuses to start when weights + that cache do not fit
gpu_memory_utilization of the GPU. The model's facts come from its own published files."""

from __future__ import annotations

import dataclasses
import json
import re
import struct

import pytest

from cli.model_manifest import build_manifest, safetensors_parameters
from config.settings import ModelArchitecture, SettingsError, gpu_fit
from config.stages import STAGES
from tests.conftest import ROOT

LLAMA = ROOT / "tests" / "fixtures" / "llama-3.1-8b-instruct"
GIB = 1024**3


def _published_llama() -> ModelArchitecture:
    config = json.loads((LLAMA / "config.json").read_text())
    total_bytes = json.loads((LLAMA / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    return ModelArchitecture.from_config(config, parameters=total_bytes // 2)  # bfloat16: 2 bytes a parameter


def test_the_stages_typed_architecture_is_the_published_models():
    published = _published_llama()
    assert published.parameters == 8_030_261_248
    for name, s in STAGES.items():
        assert s.model.model_id == "meta-llama/Llama-3.1-8B-Instruct", name
        assert s.model.architecture == published, name


def test_kv_cache_per_token_of_llama_3_1_8b_is_128_kib():
    """32 layers x K and V x 8 KV heads x 128 dims x 2 bytes."""
    assert _published_llama().kv_bytes_per_token() == 32 * 2 * 8 * 128 * 2 == 128 * 1024


def test_every_stage_fits_its_gpu_with_the_figures_the_docs_give():
    rows = {}
    for name, s in STAGES.items():
        fit = gpu_fit(s.model, s.endpoint.instance_type)
        assert fit.fits, name
        rows[name] = fit
    dev = rows["dev"]
    assert (round(dev.weights_gib, 2), dev.kv_cache_gib, round(dev.budget_gib, 2)) == (14.96, 2.0, 20.12)
    assert dev.longest_context_that_fits == 25_877
    # fp8 layers at one byte, the embedding and output head (1.05 B parameters) in bf16.
    assert round(rows["prod"].weights_gib, 2) == 8.46
    # docs/decisions.md's table is these figures.
    table = (ROOT / "docs" / "decisions.md").read_text().split("| stage | instance |", 1)[1]
    for name, fit in rows.items():
        s = STAGES[name]
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == s.endpoint.instance_type
        assert cells[2:] == [
            f"{fit.gpu_memory_gib:.2f} GiB × {s.model.gpu_memory_utilization:g} = {fit.budget_gib:.2f}",
            s.model.quantization or s.model.architecture.torch_dtype,
            f"{fit.weights_gib:.2f}",
            f"{s.model.max_model_len:,}",
            f"{fit.kv_cache_gib:.2f}",
            f"{fit.headroom_gib:.2f}",
            f"{fit.needed_gib:.2f}",
            f"{fit.longest_context_that_fits:,}",
        ], name


def test_a_stage_whose_model_does_not_fit_fails_synth_with_the_numbers():
    """The dev endpoint as it was: no max_model_len, so vLLM sized for the model's whole
    131,072 tokens (16 GiB of KV cache) beside 15 GiB of bf16 weights on an A10G (22.35 GiB)."""
    dev = STAGES["dev"]
    whole_context = dataclasses.replace(dev.model, max_model_len=131_072)
    with pytest.raises(SettingsError) as refused:
        dataclasses.replace(dev, model=whole_context)
    message = str(refused.value)
    for figure in ("ml.g5.2xlarge", "weights 14.96 GiB", "131072-token context 16.00 GiB", "= 32.96 GiB",
                   "90% of 22.35 GiB (20.12 GiB)", "at most 25877 tokens"):
        assert figure in message, message
    # One token more than fits is refused; the longest that fits is not.
    assert dataclasses.replace(dev, model=dataclasses.replace(dev.model, max_model_len=25_877))
    with pytest.raises(SettingsError):
        dataclasses.replace(dev, model=dataclasses.replace(dev.model, max_model_len=25_878))


def test_a_larger_gpu_or_tensor_parallel_makes_it_fit():
    dev = STAGES["dev"]
    whole_context = dataclasses.replace(dev.model, max_model_len=131_072)
    for instance_type in ("ml.g6e.2xlarge", "ml.g5.12xlarge"):  # an L40S; four A10Gs, split four ways
        endpoint = dataclasses.replace(dev.endpoint, instance_type=instance_type)
        assert dataclasses.replace(dev, model=whole_context, endpoint=endpoint).model.max_model_len == 131_072
    assert gpu_fit(whole_context, "ml.g5.12xlarge").tensor_parallel == 4


def test_a_scaling_target_above_max_num_seqs_fails_synth():
    prod = STAGES["prod"]
    with pytest.raises(SettingsError, match=r"scaling target \(8 concurrent requests per instance\) is above max_num_seqs \(4\)"):
        dataclasses.replace(
            prod,
            model=dataclasses.replace(prod.model, max_num_seqs=4),
            endpoint=dataclasses.replace(prod.endpoint, concurrent_requests_per_instance=8),
        )


def test_max_model_len_beyond_the_models_context_or_a_container_option_set_twice_is_refused():
    model = STAGES["dev"].model
    with pytest.raises(SettingsError, match="within the model's context"):
        dataclasses.replace(model, max_model_len=131_073)
    with pytest.raises(SettingsError, match="settings of their own"):
        dataclasses.replace(model, extra_environment={"OPTION_MAX_MODEL_LEN": "4096"})


def _safetensors(path, tensors: dict[str, tuple[int, ...]]) -> None:
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_publishing_records_the_architecture_from_the_models_own_files(tmp_path):
    """bin/model-publish's manifest carries the facts the GPU-fit check needs: config.json
    and the parameters counted in the safetensors headers (not part of the version)."""
    config = json.loads((LLAMA / "config.json").read_text())
    config.update(num_hidden_layers=2, vocab_size=16, hidden_size=8, num_attention_heads=2, num_key_value_heads=1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    _safetensors(tmp_path / "model-00001-of-00002.safetensors", {"embed": (16, 8), "q": (8, 8)})
    _safetensors(tmp_path / "model-00002-of-00002.safetensors", {"lm_head": (16, 8)})
    assert safetensors_parameters(tmp_path / "model-00001-of-00002.safetensors") == 16 * 8 + 8 * 8
    manifest = build_manifest(tmp_path)
    assert manifest.architecture == {
        "parameters": 16 * 8 * 2 + 8 * 8, "num_hidden_layers": 2, "num_key_value_heads": 1, "head_dim": 4,
        "hidden_size": 8, "vocab_size": 16, "max_position_embeddings": 131_072, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    assert json.loads(manifest.to_json())["architecture"] == manifest.architecture
    (tmp_path / "config.json").unlink()  # no config: no architecture, same kind of version
    assert build_manifest(tmp_path).architecture is None


def test_the_container_is_told_the_figures_the_check_used(synthesized):
    for name, stage in synthesized.items():
        model = STAGES[name].model
        (definition,) = [r for r in stage.templates["Inference"]["Resources"].values()
                         if r["Type"] == "AWS::SageMaker::Model" and "OPTION_ROLLING_BATCH" in str(r)]  # the LLM's
        env = definition["Properties"]["PrimaryContainer"]["Environment"]
        assert env["OPTION_MAX_MODEL_LEN"] == str(model.max_model_len), name
        assert env["OPTION_MAX_ROLLING_BATCH_SIZE"] == str(model.max_num_seqs), name
        assert env["OPTION_GPU_MEMORY_UTILIZATION"] == str(model.gpu_memory_utilization), name
        assert re.fullmatch(r"\d+", env["OPTION_MAX_MODEL_LEN"])
