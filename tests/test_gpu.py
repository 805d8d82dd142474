"""Every model family on a CUDA GPU (CuPy) against the same model on the CPU (NumPy), in float64.

The op-level CuPy cases live with the ops (the ``backend`` fixture of ``conftest.py``); this file
checks what those cannot: whole models, their fused twins, an optimizer step, generation with a
KV cache and a checkpoint written from the GPU. Each model is built twice from the same seed, one
copy moved to ``"cuda"``; both take the same batch, and the losses and every parameter's gradient
must agree to float64 rounding (the GPU sums in another order). The whole file needs CuPy and a
visible GPU; on a machine without one it is skipped as a unit (``-m gpu`` selects it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import groundup as gu
from groundup.tensor import Tensor

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not gu.cuda_is_available(), reason="needs CuPy and a visible CUDA GPU")]

DEVICE = "cuda"
RTOL, ATOL = 1e-8, 1e-10


def twins(build: Callable[[], Any]) -> tuple[Any, Any]:
    """The same float64 model twice (one seed), the second on the GPU."""
    gu.manual_seed(0)
    cpu = build().double()
    gu.manual_seed(0)
    gpu = build().double().to(DEVICE)
    return cpu, gpu


def on(device: str, *arrays: np.ndarray) -> list[Tensor]:
    """The batch as tensors on ``device`` (what the Trainer hands a model)."""
    return [Tensor(np.asarray(a), device=device) for a in arrays]


def assert_same_loss_and_grads(build: Callable[[], Any], loss_of: Callable[[Any, str], Tensor]) -> None:
    cpu, gpu = twins(build)
    losses = {}
    for name, model in (("cpu", cpu), (DEVICE, gpu)):
        gu.manual_seed(1)
        loss = loss_of(model, name)
        assert loss.device == name, f"the loss of the {name} model lives on {loss.device}"
        loss.backward()
        losses[name] = loss.item()
    np.testing.assert_allclose(losses[DEVICE], losses["cpu"], rtol=RTOL, err_msg="loss")
    grads = dict(gpu.named_parameters())
    for name, p in cpu.named_parameters():
        g = grads[name]
        assert g.device == DEVICE and (p.grad is None) == (g.grad is None), name
        if p.grad is not None:
            assert g.grad.device == DEVICE, f"{name}.grad is on {g.grad.device}"
            np.testing.assert_allclose(g.grad.numpy(), p.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


RNG = np.random.default_rng(0)
IDS = RNG.integers(0, 13, (3, 8))
TARGETS = RNG.integers(0, 13, (3, 8))


# ----------------------------------------------------------------------------- the roadmap's families
def test_mlp() -> None:
    from groundup.models.mlp import MLP, MLPConfig

    x, y = RNG.standard_normal((8, 64)), RNG.integers(0, 10, 8)
    assert_same_loss_and_grads(lambda: MLP(MLPConfig(hidden_sizes=(32, 16), activation="gelu")),
                               lambda m, d: m.loss(*on(d, x, y)))


def test_cnn() -> None:
    from groundup.models.cnn import CNN, CNNConfig

    x, y = RNG.standard_normal((4, 1, 8, 8)), RNG.integers(0, 10, 4)
    assert_same_loss_and_grads(lambda: CNN(CNNConfig(channels=(4, 8))), lambda m, d: m.loss(*on(d, x, y)))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_recurrent_language_model(cell: str, layers: int) -> None:
    from groundup.models.rnn_lm import RNNLM, RNNLMConfig

    cfg = RNNLMConfig(vocab_size=13, cell=cell, n_embd=8, hidden_size=12, num_layers=layers)
    assert_same_loss_and_grads(lambda: RNNLM(cfg), lambda m, d: m.loss(*on(d, IDS, TARGETS)))


def _seq2seq_batch() -> tuple[np.ndarray, ...]:
    src = RNG.integers(3, 11, (3, 6))
    src_mask = np.ones((3, 6), dtype=bool)
    src_mask[1, 4:] = src_mask[2, 2:] = False                                  # right padding
    src[~src_mask] = 0
    tgt_in = np.concatenate([np.ones((3, 1), dtype=np.int64), RNG.integers(3, 9, (3, 4))], axis=1)
    tgt_out = np.concatenate([tgt_in[:, 1:], np.full((3, 1), 2)], axis=1)
    return src, src_mask, tgt_in, tgt_out


@pytest.mark.parametrize("attention", [True, False])
def test_gru_encoder_decoder(attention: bool) -> None:
    from groundup.models.seq2seq import Seq2Seq, Seq2SeqConfig

    cfg = Seq2SeqConfig(src_vocab_size=11, tgt_vocab_size=9, n_embd=8, hidden_size=12, attention=attention)
    batch = _seq2seq_batch()
    assert_same_loss_and_grads(lambda: Seq2Seq(cfg), lambda m, d: m.loss(*on(d, *batch)))


def test_transformer_encoder_decoder() -> None:
    from groundup.models.transformer_seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig

    cfg = TransformerSeq2SeqConfig(src_vocab_size=11, tgt_vocab_size=9, d_model=16, nhead=2, dim_feedforward=24,
                                   max_len=8)
    batch = _seq2seq_batch()
    assert_same_loss_and_grads(lambda: TransformerSeq2Seq(cfg), lambda m, d: m.loss(*on(d, *batch)))


GPT_CASES = [dict(pos_encoding="learned", norm="pre"), dict(pos_encoding="rotary", norm="pre", bias=False),
             dict(pos_encoding="sinusoidal", norm="post")]


@pytest.mark.parametrize("fast", [False, True], ids=["GPT", "FastGPT"])
@pytest.mark.parametrize("case", GPT_CASES, ids=lambda c: c["pos_encoding"])
@pytest.mark.parametrize("padded", [False, True])
def test_gpt_and_its_fast_twin(fast: bool, case: dict, padded: bool) -> None:
    from groundup.models.gpt import GPT, GPTConfig
    from groundup.models.gpt_fast import FastGPT

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, **case)
    mask = np.ones((3, 8), dtype=bool)
    mask[1, 5:] = False
    targets = np.where(mask, TARGETS, -100)
    assert_same_loss_and_grads(lambda: (FastGPT if fast else GPT)(cfg),
                               lambda m, d: m.loss(*on(d, IDS, targets), attention_mask=mask if padded else None))


def test_fast_gpt_with_dropout_equals_the_readable_gpt_on_the_gpu() -> None:
    """The twins draw the same dropout masks in the same order on the GPU too."""
    from groundup.models.gpt import GPT, GPTConfig
    from groundup.models.gpt_fast import FastGPT

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.2)
    gu.manual_seed(0)
    readable = GPT(cfg).double().to(DEVICE)
    fast = readable.as_class(FastGPT)
    results = []
    for model in (readable, fast):
        gu.manual_seed(7)
        loss = model.loss(*on(DEVICE, IDS, TARGETS))
        loss.backward()
        results.append((loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-10)
    for name, grad in results[0][1].items():
        np.testing.assert_allclose(results[1][1][name], grad, rtol=1e-8, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("fast", [False, True], ids=["BERT", "FastBERT"])
def test_bert_and_its_fast_twin(fast: bool) -> None:
    from groundup.models.bert import BERT, BERTConfig
    from groundup.models.bert_fast import FastBERT

    cfg = BERTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    mask = np.ones((3, 8), dtype=bool)
    mask[2, 6:] = False
    labels = np.where(RNG.random((3, 8)) < 0.4, TARGETS, -100)
    labels[0, 0] = 5                                                            # at least one chosen position
    assert_same_loss_and_grads(lambda: (FastBERT if fast else BERT)(cfg),
                               lambda m, d: m.loss(*on(d, IDS, labels), attention_mask=mask))


# ----------------------------------------------------------------------------- training, decoding, saving
def test_adamw_steps_with_clipping_match_the_cpu() -> None:
    from groundup.models.gpt import GPTConfig
    from groundup.models.gpt_fast import FastGPT
    from groundup.nn.utils import clip_grad_norm_

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    cpu, gpu = twins(lambda: FastGPT(cfg))
    for model, device in ((cpu, "cpu"), (gpu, DEVICE)):
        opt = gu.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        for step in range(3):
            opt.zero_grad()
            model.loss(*on(device, np.roll(IDS, step), TARGETS)).backward()
            clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
    moved = dict(gpu.named_parameters())
    for name, p in cpu.named_parameters():
        assert moved[name].device == DEVICE
        np.testing.assert_allclose(moved[name].detach().numpy(), p.detach().numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=name)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_matches_the_cpu(use_cache: bool) -> None:
    from groundup.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                    pos_encoding="rotary")
    cpu, gpu = twins(lambda: GPT(cfg))
    prompt = IDS[:, :3]
    out = [m.generate(prompt, 12, temperature=0.0, use_cache=use_cache).numpy() for m in (cpu, gpu)]
    np.testing.assert_array_equal(out[1], out[0])
    sampled = [m.generate(prompt, 12, temperature=1.0, top_k=5, seed=3, use_cache=use_cache).numpy()
               for m in (cpu, gpu)]
    np.testing.assert_array_equal(sampled[1], sampled[0])


def test_a_checkpoint_written_from_the_gpu_loads_on_the_cpu(tmp_path) -> None:
    from groundup.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
    gu.manual_seed(0)
    model = GPT(cfg).to(DEVICE)
    model.save(tmp_path / "ckpt")
    back = GPT.load(tmp_path / "ckpt")
    moved = dict(model.named_parameters())
    for name, p in back.named_parameters():
        assert p.device == "cpu"
        np.testing.assert_array_equal(p.detach().numpy(), moved[name].detach().numpy(), err_msg=name)


def test_float32_training_on_the_gpu_lowers_the_loss() -> None:
    """A few hundred float32 steps of the fused GPT on one repeated batch: the loss falls (memorised)."""
    from groundup.models.gpt import GPTConfig
    from groundup.models.gpt_fast import FastGPT

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    gu.manual_seed(0)
    model = FastGPT(cfg).to(DEVICE)
    opt = gu.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = on(DEVICE, IDS, TARGETS)
    first = None
    for _ in range(200):
        opt.zero_grad()
        loss = model.loss(x, y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.dtype == gu.float32 and loss.item() < 0.3 * first, (first, loss.item())


# ----------------------------------------------------------------------------- devices at the boundaries
def test_a_loss_refuses_a_target_tensor_on_the_cpu_and_moves_a_numpy_one() -> None:
    import groundup.functional as F

    logits = gu.randn(3, 13, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"cross_entropy: target is on cpu but the input is on cuda"):
        F.cross_entropy(logits, gu.tensor(TARGETS[0, :3]))
    with pytest.raises(RuntimeError, match=r"scaled_dot_product_attention: attn_mask is on cpu"):
        q = gu.randn(2, 3, 4, device=DEVICE)
        F.scaled_dot_product_attention(q, q, q, attn_mask=gu.ones(3, 3, dtype=gu.bool))
    loss = F.cross_entropy(logits, TARGETS[0, :3])                             # a NumPy array: copied over
    expected = F.cross_entropy(logits.detach().cpu(), TARGETS[0, :3])
    assert loss.device == DEVICE
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-6)


def test_indexing_and_gather_with_numpy_indices_on_the_gpu() -> None:
    x = gu.randn(5, 4, dtype=gu.float64, device=DEVICE, requires_grad=True)
    rows, picks = np.array([3, 0, 3, 1]), np.array([[0, 2], [1, 1], [3, 0], [2, 2], [0, 0]])
    out = (x[rows] * 2.0).sum() + x.gather(1, gu.tensor(picks, device=DEVICE)).sum()
    out.backward()
    expected = np.zeros((5, 4))
    np.add.at(expected, rows, 2.0)
    np.add.at(expected, (np.arange(5)[:, None], picks), 1.0)
    np.testing.assert_array_equal(x.grad.numpy(), expected)


@pytest.mark.parametrize("pos", ["rotary", "learned"])
def test_the_exported_torch_twin_runs_on_cuda(pos: str) -> None:
    """TorchGPT (what ``groundup export --to torch`` ships) keeps its rotary tables and positions on the
    model's device, and gives groundup's loss and greedy tokens there."""
    import torch

    from groundup.interop.torch_gpt import TorchGPT
    from groundup.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, pos_encoding=pos)
    gu.manual_seed(0)
    model = GPT(cfg).double()
    ref = TorchGPT(cfg).double()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    ref = ref.cuda()
    model.to(DEVICE)
    ours = model.loss(*on(DEVICE, IDS, TARGETS)).item()
    theirs = ref.loss(torch.from_numpy(IDS).cuda(), torch.from_numpy(TARGETS).cuda()).item()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    tokens = ref.generate(torch.from_numpy(IDS[:, :3]).cuda(), 6, temperature=1e-6).cpu().numpy()
    np.testing.assert_array_equal(tokens, model.generate(IDS[:, :3], 6, temperature=0.0).numpy())
