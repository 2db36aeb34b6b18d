"""herd/train/losses.py: masked CE equals transformers' LlamaForCausalLM loss on a tiny random checkpoint
loaded into herd, with the gradients of the naive full-logits version and without ever holding all logits;
DPO and KD equal their direct formulas."""
from __future__ import annotations

import math
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from herd.train import losses
from herd.train.losses import (
    distillation_loss,
    dpo_loss,
    masked_cross_entropy,
    masked_cross_entropy_mean,
    sequence_logps,
    shift_labels,
    token_logps,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from modelkit import build_hf  # tests/model's tiny random HF Llama checkpoints

TOL = 1e-5


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ---- a tiny HF checkpoint and the same weights in herd --------------------------------------------


@pytest.fixture(scope="module", params=["gqa_scaled", "tied_gqa"])
def pair(request, tmp_path_factory):
    """(transformers LlamaForCausalLM, herd Transformer loaded from its save_pretrained directory)."""
    from herd.model.weights import load_model

    hf = build_hf(request.param)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    hf.save_pretrained(path)
    ours = load_model(path, dtype=torch.float32, device="cpu").eval()
    assert ours.args.tie_embeddings == hf.config.tie_word_embeddings
    return hf, ours


def chat_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (3, 41) and a mask of 'assistant' spans to learn (row 2 learns one token only)."""
    ids = torch.randint(0, vocab, (3, 41), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 12:30] = True
    mask[0, 35:] = True
    mask[1, 3:9] = True
    mask[1, 20:40] = True
    mask[2, 17] = True
    return ids, mask


def herd_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """What the output head reads: the final norm of the last block's output (B, T, dim)."""
    return model.norm(model.hidden(ids, torch.arange(ids.shape[1]), 0, None))


def test_shift_labels_moves_targets_left_and_respects_mask_and_documents():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]])
    mask = torch.tensor([[False, False, True, True, False, True]])
    assert shift_labels(ids).tolist() == [[11, 12, 13, 14, 15, -100]]
    assert shift_labels(ids, mask).tolist() == [[-100, 12, 13, -100, 15, -100]]
    docs = torch.tensor([[0, 0, 0, 1, 1, 1]])
    assert shift_labels(ids, doc_ids=docs).tolist() == [[11, 12, -100, 14, 15, -100]]
    assert shift_labels(ids, mask, ignore_index=-1).tolist() == [[-1, 12, 13, -1, 15, -1]]
    # transformers' unshifted labels, as herd.train.data makes them, give the same targets
    hf_labels = ids.masked_fill(~mask, -100)
    assert torch.equal(shift_labels(ids, hf_labels != -100), shift_labels(ids, mask))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
def test_masked_ce_equals_transformers_loss(pair, chunk_size):
    hf, ours = pair
    vocab = hf.config.vocab_size
    ids, mask = chat_batch(vocab)
    with torch.no_grad():
        ref = hf(input_ids=ids, labels=ids.masked_fill(~mask, -100)).loss
        hidden = herd_hidden(ours, ids)
        logits = ours(ids)
    labels = shift_labels(ids, mask)
    loss_sum, n = masked_cross_entropy(hidden, ours.output.weight, labels, chunk_size=chunk_size)
    assert n == int(mask[:, 1:].sum())
    assert abs(loss_sum.item() / n - ref.item()) < TOL
    assert loss_sum.dtype == torch.float32 and loss_sum.dim() == 0
    mean = masked_cross_entropy_mean(hidden, ours.output.weight, labels, chunk_size=chunk_size)
    assert abs(mean.item() - ref.item()) < TOL
    # the same from logits (head_weight=None)
    assert abs(masked_cross_entropy_mean(logits, None, labels, chunk_size=chunk_size).item() - ref.item()) < TOL


@pytest.mark.parametrize("chunk_size", [5, 13, None])
def test_masked_ce_gradients_equal_naive_full_logits(pair, chunk_size):
    _, ours = pair
    ids, mask = chat_batch(ours.args.vocab_size)
    labels = shift_labels(ids, mask)
    with torch.no_grad():
        base = herd_hidden(ours, ids)
    h = base.clone().requires_grad_()
    w = ours.output.weight.detach().clone().requires_grad_()
    loss_sum, n = masked_cross_entropy(h, w, labels, chunk_size=chunk_size)
    gh, gw = torch.autograd.grad(loss_sum / n, (h, w))

    h2 = base.clone().requires_grad_()
    w2 = ours.output.weight.detach().clone().requires_grad_()
    naive = F.cross_entropy(F.linear(h2, w2).flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    nh, nw = torch.autograd.grad(naive, (h2, w2))
    assert abs((loss_sum / n).item() - naive.item()) < TOL
    assert max_diff(gh, nh) < TOL and max_diff(gw, nw) < TOL
    assert gh[~(labels != -100)].abs().max().item() == 0.0  # unlabelled positions get no gradient


def test_backward_through_herd_model_equals_transformers_backward(pair):
    hf, ours = pair
    ids, mask = chat_batch(hf.config.vocab_size)
    hf.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    hf(input_ids=ids, labels=ids.masked_fill(~mask, -100)).loss.backward()
    masked_cross_entropy_mean(herd_hidden(ours, ids), ours.output.weight, shift_labels(ids, mask),
                              chunk_size=9).backward()
    try:
        assert max_diff(ours.output.weight.grad, hf.lm_head.weight.grad) < TOL
        assert max_diff(ours.tok_embeddings.weight.grad, hf.model.embed_tokens.weight.grad) < TOL
        assert max_diff(ours.norm.weight.grad, hf.model.norm.weight.grad) < TOL
        assert max_diff(ours.layers[0].feed_forward.w2.weight.grad, hf.model.layers[0].mlp.down_proj.weight.grad) < TOL
    finally:
        hf.zero_grad(set_to_none=True)
        ours.zero_grad(set_to_none=True)


def test_gradcheck_in_fp64():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(11, 4, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, 1] = labels[1, 4] = -100
    assert torch.autograd.gradcheck(lambda a, b: masked_cross_entropy(a, b, labels, chunk_size=3)[0], (h, w))
    # per-sequence outputs: every row gets its own upstream gradient
    assert torch.autograd.gradcheck(lambda a, b: sequence_logps(a, b, labels, chunk_size=4, average=True), (h, w))


def test_sequence_and_token_logps_equal_log_softmax():
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(3, 8, 6, generator=g), torch.randn(19, 6, generator=g)
    labels = torch.randint(0, 19, (3, 8), generator=g)
    labels[:, :3] = -100
    labels[2] = -100  # a sequence with nothing labelled
    logp = F.log_softmax(F.linear(h, w), -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    logp = logp.masked_fill(labels == -100, 0.0)
    assert max_diff(token_logps(h, w, labels, chunk_size=4), logp) < TOL
    assert max_diff(sequence_logps(h, w, labels, chunk_size=4), logp.sum(-1)) < TOL
    assert max_diff(sequence_logps(F.linear(h, w), None, labels), logp.sum(-1)) < TOL
    count = (labels != -100).sum(-1).clamp(min=1)
    assert max_diff(sequence_logps(h, w, labels, average=True), logp.sum(-1) / count) < TOL
    assert sequence_logps(h, w, labels)[2].item() == 0.0


def test_low_precision_and_autocast_follow_the_naive_computation():
    g = torch.Generator().manual_seed(4)
    h32, w32 = torch.randn(2, 33, 16, generator=g), torch.randn(300, 16, generator=g) / 4
    labels = torch.randint(0, 300, (2, 33), generator=g)
    labels[0, :10] = -100

    def both(fn_ours, fn_naive, h, w):
        a, b = h.clone().requires_grad_(), w.clone().requires_grad_()
        ours = fn_ours(a, b)
        ours.backward()
        c, d = h.clone().requires_grad_(), w.clone().requires_grad_()
        naive = fn_naive(c, d)
        naive.backward()
        return ours, naive, (a.grad, b.grad), (c.grad, d.grad)

    def naive_ce(a, b):
        return F.cross_entropy(F.linear(a, b).float().flatten(0, 1), labels.flatten())

    # bf16 weights and activations: logits made in bf16, everything after in fp32
    hb, wb = h32.bfloat16(), w32.bfloat16()
    ours, naive, (gh, gw), (nh, nw) = both(
        lambda a, b: masked_cross_entropy_mean(a, b, labels, chunk_size=10), naive_ce, hb, wb)
    assert ours.dtype == torch.float32 and gh.dtype == gw.dtype == torch.bfloat16
    assert abs(ours.item() - naive.item()) < 1e-3
    assert max_diff(gh, nh) < 2e-2 * nh.abs().max().item() and max_diff(gw, nw) < 2e-2 * nw.abs().max().item()

    # fp32 master weights under bf16 autocast: the head's matmul runs in bf16 as nn.Linear's would
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, naive, (gh, gw), (nh, nw) = both(
            lambda a, b: masked_cross_entropy_mean(a, b, labels, chunk_size=10), naive_ce, h32, w32)
    full32 = naive_ce(h32, w32)
    assert gh.dtype == gw.dtype == torch.float32
    assert abs(ours.item() - naive.item()) < 1e-3 and abs(ours.item() - full32.item()) > 1e-7  # bf16 was used
    assert max_diff(gh, nh) < 2e-2 * nh.abs().max().item() and max_diff(gw, nw) < 2e-2 * nw.abs().max().item()


def test_no_labelled_token_and_bad_labels():
    h = torch.randn(2, 4, 8, requires_grad=True)
    w = torch.randn(10, 8, requires_grad=True)
    none = torch.full((2, 4), -100)
    loss_sum, n = masked_cross_entropy(h, w, none)
    assert n == 0 and loss_sum.item() == 0.0
    loss_sum.backward()
    assert h.grad.abs().sum().item() == 0.0 and w.grad.abs().sum().item() == 0.0
    assert masked_cross_entropy_mean(h, w, none).item() == 0.0
    with pytest.raises(ValueError, match=r"label 10 is neither a token id in \[0, 10\)"):
        masked_cross_entropy(h, w, torch.full((2, 4), 10))
    with pytest.raises(ValueError, match="labels shape"):
        masked_cross_entropy(h, w, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="head_weight must be"):
        masked_cross_entropy(h, w.T, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        masked_cross_entropy(h, w, torch.zeros(2, 4, dtype=torch.long), chunk_size=0)


# ---- memory: no (tokens x vocab) tensor, forward or backward ----------------------------------------


class TensorMemory(TorchDispatchMode):
    """Watches every tensor that aten ops create: the largest one (elements) and the peak bytes of
    those alive together (a storage counts until the last tensor made on it dies)."""

    def __init__(self):
        super().__init__()
        self.bytes: dict[int, int] = {}
        self.users: dict[int, set[int]] = {}
        self.live = self.peak = self.largest = 0

    def _released(self, key: int, tid: int) -> None:
        users = self.users.get(key)
        if users is not None:
            users.discard(tid)
            if not users:
                self.live -= self.bytes.pop(key)
                del self.users[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            self.largest = max(self.largest, t.numel())
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in self.bytes:
                self.bytes[key], self.users[key] = storage.nbytes(), set()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            if id(t) not in self.users[key]:
                self.users[key].add(id(t))
                weakref.finalize(t, self._released, key, id(t))
        return out


def test_chunked_ce_never_materialises_all_logits():
    n_tok, vocab, dim, chunk = 1024, 16384, 32, 64
    g = torch.Generator().manual_seed(5)
    h = torch.randn(n_tok, dim, generator=g, requires_grad=True)
    w = (torch.randn(vocab, dim, generator=g) / 8).requires_grad_()
    labels = torch.randint(0, vocab, (n_tok,), generator=g)
    all_logits = n_tok * vocab * 4

    with TensorMemory() as naive:
        F.cross_entropy(F.linear(h, w), labels, reduction="sum").backward()
    naive_grads = h.grad, w.grad
    h.grad = w.grad = None
    with TensorMemory() as ours:
        masked_cross_entropy(h, w, labels, chunk_size=chunk)[0].backward()

    assert naive.largest >= n_tok * vocab and naive.peak >= 2 * all_logits  # the tracker sees the naive cost
    assert ours.largest <= chunk * vocab  # never more than one chunk of logits
    # a few chunk-sized temporaries plus the head's fp32 gradient (~12 MiB here), not the 64 MiB of
    # (tokens x vocab) logits that the naive version holds several times over (~200 MiB)
    assert ours.peak <= 4 * chunk * vocab * 4 + 2 * vocab * dim * 4 < all_logits / 2
    assert ours.peak < naive.peak / 8
    assert max_diff(h.grad, naive_grads[0]) < 1e-4 and max_diff(w.grad, naive_grads[1]) < 1e-4

    # chunk_size=None sizes chunks from the vocabulary
    h.grad = w.grad = None
    with TensorMemory() as auto:
        masked_cross_entropy(h, w, labels)[0].backward()
    assert auto.largest <= max(losses.LOGITS_PER_CHUNK, vocab)


def test_distillation_from_hidden_never_materialises_all_logits():
    n_tok, vocab, dim, k, chunk = 256, 8192, 16, 8, 32
    g = torch.Generator().manual_seed(6)
    h = torch.randn(n_tok, dim, generator=g, requires_grad=True)
    w = torch.randn(vocab, dim, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (n_tok,), generator=g)
    ids = torch.randint(0, vocab, (n_tok, k), generator=g)
    lps = torch.randn(n_tok, k, generator=g).log_softmax(-1)
    with TensorMemory() as mem:
        distillation_loss(h, (ids, lps), labels, head_weight=w, temperature=2.0, chunk_size=chunk).loss.backward()
    assert mem.largest <= max(chunk * vocab, vocab * dim)


# ---- DPO ------------------------------------------------------------------------------------------------


def preference_logps():
    pc = torch.tensor([-10.0, -12.5, -7.25, -20.0, -3.0], requires_grad=True)
    pr = torch.tensor([-11.0, -12.0, -9.0, -18.5, -3.0], requires_grad=True)
    rc = torch.tensor([-10.5, -12.0, -8.0, -19.0, -3.5], requires_grad=True)
    rr = torch.tensor([-10.0, -12.25, -8.5, -19.0, -2.5], requires_grad=True)
    return pc, pr, rc, rr


@pytest.mark.parametrize("loss_type,beta,eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("sigmoid", 0.1, 0.2),
                                                 ("sigmoid", 2.0, 0.5), ("ipo", 0.1, 0.0), ("ipo", 0.7, 0.0)])
def test_dpo_loss_and_gradients_equal_direct_formula(loss_type, beta, eps):
    pc, pr, rc, rr = preference_logps()
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta, loss_type, eps)
    gc, gr, grc, grr = torch.autograd.grad(loss, (pc, pr, rc, rr), allow_unused=True)

    z = ((pc - pr) - (rc - rr)).detach().double()
    if loss_type == "sigmoid":
        direct = (-(1 - eps) * torch.log(torch.sigmoid(beta * z)) - eps * torch.log(torch.sigmoid(-beta * z))).mean()
        dz = (-(1 - eps) * beta * torch.sigmoid(-beta * z) + eps * beta * torch.sigmoid(beta * z)) / len(z)
    else:
        direct = ((z - 1 / (2 * beta)) ** 2).mean()
        dz = 2 * (z - 1 / (2 * beta)) / len(z)
    assert abs(loss.item() - direct.item()) < 1e-6
    assert max_diff(gc, dz) < 1e-6 and max_diff(gr, -dz) < 1e-6
    assert grc is None and grr is None  # the reference is a constant
    assert max_diff(chosen, beta * (pc - rc).detach()) < 1e-6 and max_diff(rejected, beta * (pr - rr).detach()) < 1e-6
    assert not chosen.requires_grad and not rejected.requires_grad


def test_dpo_known_values_reductions_and_errors():
    zeros = torch.zeros(4)
    for eps in (0.0, 0.3):  # equal log-ratios: log 2 whatever the smoothing
        assert abs(dpo_loss(zeros, zeros, zeros, zeros, 0.1, "sigmoid", eps)[0].item() - math.log(2)) < 1e-6
    at_target = torch.full((4,), 1 / (2 * 0.25))  # IPO's minimum: z = 1 / (2 beta)
    assert dpo_loss(at_target, zeros, zeros, zeros, 0.25, "ipo")[0].item() < 1e-12
    pc, pr, rc, rr = preference_logps()
    per = dpo_loss(pc, pr, rc, rr, reduction="none")[0]
    assert per.shape == (5,)
    assert abs(dpo_loss(pc, pr, rc, rr, reduction="sum")[0].item() - per.sum().item()) < 1e-5
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="ref_chosen_logps shape"):
        dpo_loss(pc, pr, rc[:3], rr)


def test_dpo_on_sequence_logps_prefers_the_chosen_answer_after_one_step():
    """End to end on a tiny head: one gradient step on the DPO loss raises the chosen-vs-rejected margin."""
    g = torch.Generator().manual_seed(7)
    h = torch.randn(4, 12, 8, generator=g)
    w = torch.randn(40, 8, generator=g, requires_grad=True)
    ref_w = w.detach().clone()
    chosen = torch.randint(0, 40, (2, 12), generator=g)
    rejected = torch.randint(0, 40, (2, 12), generator=g)
    labels = torch.cat([chosen, rejected]).masked_fill(torch.arange(12) < 5, -100)  # prompt: 5 tokens

    def margin(weight):
        logps = sequence_logps(h, weight, labels, chunk_size=7)
        with torch.no_grad():
            ref = sequence_logps(h, ref_w, labels)
        loss, cr, rr = dpo_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta=0.5)
        return loss, (cr - rr).mean().item()

    loss, before = margin(w)
    loss.backward()
    with torch.no_grad():
        w -= 1.0 * w.grad
    _, after = margin(w)
    assert before == 0.0 and after > 0.1


# ---- knowledge distillation -----------------------------------------------------------------------


def kd_inputs(vocab: int = 23):
    g = torch.Generator().manual_seed(8)
    student = torch.randn(2, 9, vocab, generator=g) * 2
    teacher = torch.randn(2, 9, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (2, 9), generator=g)
    labels[0, :4] = -100
    labels[1, 8] = -100
    return student, teacher, labels


def direct_kd(student, teacher_p, labels, temperature, alpha, gather_ids=None):
    """F.kl_div of the (already tempered, renormalised) teacher probabilities against the student."""
    m = labels != -100
    log_q = F.log_softmax(student[m] / temperature, -1)
    if gather_ids is not None:
        log_q = log_q.gather(-1, gather_ids[m])
    kl = F.kl_div(log_q, teacher_p[m], reduction="batchmean")  # summed over the vocab, mean over tokens
    ce = F.cross_entropy(student[m], labels[m])
    return alpha * temperature**2 * kl + (1 - alpha) * ce, kl, ce


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.5, 0.3), (0.7, 1.0), (2.0, 0.0)])
def test_kd_full_logits_equals_direct_kl(temperature, alpha):
    student, teacher, labels = kd_inputs()
    s = student.clone().requires_grad_()
    out = distillation_loss(s, teacher, labels, temperature=temperature, alpha=alpha, chunk_size=4)
    (g_ours,) = torch.autograd.grad(out.loss, s)
    s2 = student.clone().requires_grad_()
    direct, kl, ce = direct_kd(s2, F.softmax(teacher / temperature, -1), labels, temperature, alpha)
    (g_direct,) = torch.autograd.grad(direct, s2)
    assert out.n_tokens == 13
    assert abs(out.loss.item() - direct.item()) < TOL
    assert abs(out.kd.item() - kl.item()) < TOL and abs(out.ce.item() - ce.item()) < TOL
    assert max_diff(g_ours, g_direct) < TOL
    assert out.kd.item() > 0
    # a student equal to the teacher has zero KL
    same = distillation_loss(teacher, teacher, labels, temperature=temperature, alpha=alpha)
    assert abs(same.kd.item()) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_topk_with_k_equal_vocab_equals_full(temperature):
    student, teacher, labels = kd_inputs()
    lps, ids = teacher.log_softmax(-1).topk(teacher.shape[-1], dim=-1)
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    full = distillation_loss(s1, teacher, labels, temperature=temperature, alpha=0.6)
    topk = distillation_loss(s2, (ids, lps), labels, temperature=temperature, alpha=0.6, chunk_size=5)
    assert abs(full.loss.item() - topk.loss.item()) < TOL
    assert max_diff(torch.autograd.grad(full.loss, s1)[0], torch.autograd.grad(topk.loss, s2)[0]) < TOL


def test_kd_topk_renormalises_the_teacher_over_k():
    student, teacher, labels = kd_inputs()
    lps, ids = teacher.log_softmax(-1).topk(5, dim=-1)
    s = student.clone().requires_grad_()
    out = distillation_loss(s, (ids, lps), labels, temperature=2.0, alpha=0.4)
    s2 = student.clone().requires_grad_()
    direct, _, _ = direct_kd(s2, F.softmax(lps / 2.0, -1), labels, 2.0, 0.4, gather_ids=ids)
    assert abs(out.loss.item() - direct.item()) < TOL
    assert max_diff(torch.autograd.grad(out.loss, s)[0], torch.autograd.grad(direct, s2)[0]) < TOL


def test_kd_from_hidden_equals_from_logits_and_sum_reduction():
    g = torch.Generator().manual_seed(9)
    h, w = torch.randn(2, 9, 6, generator=g), torch.randn(23, 6, generator=g)
    _, teacher, labels = kd_inputs()
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    a = distillation_loss(h1, teacher, labels, head_weight=w1, temperature=1.5, alpha=0.5, chunk_size=4)
    b = distillation_loss(F.linear(h2, w2), teacher, labels, temperature=1.5, alpha=0.5)
    assert abs(a.loss.item() - b.loss.item()) < TOL
    ga, gb = torch.autograd.grad(a.loss, (h1, w1)), torch.autograd.grad(b.loss, (h2, w2))
    assert max_diff(ga[0], gb[0]) < TOL and max_diff(ga[1], gb[1]) < TOL
    summed = distillation_loss(h, teacher, labels, head_weight=w, temperature=1.5, reduction="sum")
    assert abs(summed.loss.item() / summed.n_tokens - a.loss.item()) < TOL
    with pytest.raises(ValueError, match="teacher logits must be"):
        distillation_loss(h, teacher[..., :5], labels, head_weight=w)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(h, teacher, labels, head_weight=w, alpha=1.5)
