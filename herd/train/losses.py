"""Training losses as pure functions of tensors (torch only): masked next-token cross-entropy computed
from the final hidden states and the output head in chunks of tokens, per-sequence log-probs, DPO
(sigmoid / IPO) and knowledge distillation (forward KL at a temperature, full or top-k teacher).

Label convention (one for every function here): labels are ALREADY SHIFTED, i.e. aligned with the
hidden states: `labels[..., t]` is the token that position t must predict (the input token at t+1),
or `ignore_index` where position t is not trained. `shift_labels(input_ids, mask)` builds them from
the input ids and a mask of the tokens to learn (assistant tokens, say).

Hidden states are what the output head reads: for herd's Transformer that is
`model.norm(model.hidden(tokens, positions, 0, None))` with head `model.output.weight` (V, D), so
`F.linear(hidden, head_weight)` are the model's logits. Where a function takes `head_weight=None`,
its first argument is taken to be logits (..., V) instead.

Why chunks: a 128K vocabulary makes full fp32 logits 0.5 MB per token, 4 GB for an 8K-token batch,
and autograd would keep several such tensors. `masked_cross_entropy`, `token_logps` and
`sequence_logps` select the labelled positions, then project `chunk_size` of them at a time; a custom
autograd Function keeps only one fp32 log-sum-exp per token and recomputes each chunk's logits in
backward, so at most one chunk of logits (chunk_size x V) exists at any moment, forward or backward.
`distillation_loss` does the same with activation checkpointing per chunk.

Precision: logits are computed in the head's dtype (or the autocast dtype when autocast is on, as
`nn.Linear` would), then log-softmax, sums and the head's gradient are accumulated in fp32 (fp64 when
the inputs are fp64, which lets `torch.autograd.gradcheck` check the gradients).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# with chunk_size=None, a chunk holds about this many logits (2**25 fp32 = 128 MiB): 261 tokens
# for Llama 3's 128,256-token vocabulary
LOGITS_PER_CHUNK = 1 << 25
DPO_LOSS_TYPES = ("sigmoid", "ipo")

__all__ = [
    "IGNORE_INDEX",
    "DistillationLoss",
    "distillation_loss",
    "dpo_loss",
    "masked_cross_entropy",
    "masked_cross_entropy_mean",
    "sequence_logps",
    "shift_labels",
    "token_logps",
]


# ---- labels ----------------------------------------------------------------------------------


def shift_labels(
    input_ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Shifted labels (..., T) for input_ids (..., T): labels[..., t] = input_ids[..., t+1] where
    mask[..., t+1] is true, else ignore_index; the last position is always ignore_index.

    mask (..., T) bool marks the tokens to learn (the targets: an assistant's tokens and its closing
    <|eot_id|>); None learns every token after the first. Transformers' `labels` argument, and
    herd.train.data's, is the unshifted `input_ids.where(mask, -100)`: pass `mask=labels != -100`.
    doc_ids (..., T), for packed rows: the document each token belongs to; a position whose next
    token starts another document predicts nothing."""
    for name, t in (("mask", mask), ("doc_ids", doc_ids)):
        if t is not None and t.shape != input_ids.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != input_ids shape {tuple(input_ids.shape)}")
    targets = input_ids[..., 1:]
    if mask is not None:
        targets = targets.masked_fill(~mask[..., 1:].bool(), ignore_index)
    if doc_ids is not None:
        targets = targets.masked_fill(doc_ids[..., 1:] != doc_ids[..., :-1], ignore_index)
    return F.pad(targets, (0, 1), value=ignore_index)


# ---- shared pieces ---------------------------------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation, fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype in force on this device type, or None."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        pass
    return None


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device.type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()


def _chunk_rows(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, LOGITS_PER_CHUNK // max(vocab, 1))
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    return int(chunk_size)


def _select(
    x: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The labelled rows: x (..., H) -> (n, H), labels (...) -> (n,), and their flat indices (n,)."""
    if x.dim() < 1 or labels.shape != x.shape[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} must be the leading shape of {tuple(x.shape)}")
    flat_y = labels.reshape(-1)
    idx = (flat_y != ignore_index).nonzero().squeeze(1)
    return x.reshape(-1, x.shape[-1]).index_select(0, idx), flat_y.index_select(0, idx), idx


def _check_targets(y: torch.Tensor, vocab: int, ignore_index: int | None) -> None:
    """Token ids in [0, vocab) (a bad one would be a device-side assert on CUDA)."""
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= vocab):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        if ignore_index is None:
            raise ValueError(f"teacher top-k id {bad} is not a token id in [0, {vocab})")
        raise ValueError(f"label {bad} is neither a token id in [0, {vocab}) nor ignore_index ({ignore_index})")


def _check_head(x: torch.Tensor, head_weight: torch.Tensor) -> None:
    if head_weight.dim() != 2 or head_weight.shape[1] != x.shape[-1]:
        raise ValueError(f"head_weight must be (vocab, {x.shape[-1]}), got {tuple(head_weight.shape)}")


def _map_rows(fn: Callable[..., tuple[torch.Tensor, ...]], chunk: int, *rows: torch.Tensor,
              grad: bool) -> tuple[torch.Tensor, ...]:
    """fn over chunks of `chunk` rows of each tensor in `rows`, outputs concatenated along dim 0;
    with grad, each chunk is checkpointed (its activations recomputed in backward, not kept)."""
    n = rows[0].shape[0]
    outs: list[tuple[torch.Tensor, ...]] = []
    for s in range(0, max(n, 1), chunk):
        part = [r[s : s + chunk] for r in rows]
        outs.append(checkpoint(fn, *part, use_reentrant=False) if grad else fn(*part))
    return tuple(torch.cat(col) for col in zip(*outs))


class _LinearNLL(torch.autograd.Function):
    """nll (n,) = logsumexp(h @ W.T) - (h @ W.T)[label] for h (n, D), W (V, D), chunk rows at a time.
    Saves only the inputs and the log-sum-exp (n,); backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, dtype: torch.dtype):  # type: ignore[override]
        acc = _acc_dtype(dtype)
        n = hidden.shape[0]
        nll = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        with _no_autocast(hidden.device):
            h, w = hidden.to(dtype), weight.to(dtype)
            for s in range(0, n, chunk):
                logits = F.linear(h[s : s + chunk], w).to(acc)  # (c, V): the only large tensor
                lse_c = torch.logsumexp(logits, dim=-1)
                lse[s : s + chunk] = lse_c
                nll[s : s + chunk] = lse_c - logits.gather(1, targets[s : s + chunk, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_nll):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype, chunk, acc = ctx.dtype, ctx.chunk, lse.dtype
        grad_h = grad_w = None
        with _no_autocast(hidden.device):
            h, w = hidden.to(dtype), weight.to(dtype)
            if need_h:
                grad_h = torch.empty_like(h)
            if need_w:
                grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            for s in range(0, h.shape[0], chunk):
                e = min(s + chunk, h.shape[0])
                # d nll / d logits = softmax - onehot(label), times the incoming gradient per row
                g = F.linear(h[s:e], w).to(acc).sub_(lse[s:e, None]).exp_()
                g[torch.arange(e - s, device=g.device), targets[s:e]] -= 1.0
                g.mul_(grad_nll[s:e, None].to(acc))
                g = g.to(dtype)
                if need_h:
                    grad_h[s:e] = g @ w
                if need_w:
                    if g.dtype == acc:
                        grad_w.addmm_(g.T, h[s:e])
                    else:  # bf16/fp16 product (fp32 inside the GEMM), summed over chunks in fp32
                        grad_w += g.T @ h[s:e]
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            None,
            None,
            None,
        )


def _selected_nll(x: torch.Tensor, head_weight: torch.Tensor | None, y: torch.Tensor,
                  chunk_size: int | None, ignore_index: int) -> torch.Tensor:
    """Per-row NLL (n,) in fp32 of labels y (n,) for hidden rows x (n, D) with head (V, D), or for
    logits rows x (n, V) when head_weight is None."""
    if head_weight is None:
        _check_targets(y, x.shape[-1], ignore_index)
        acc = _acc_dtype(x.dtype)

        def nll(xc: torch.Tensor, yc: torch.Tensor) -> tuple[torch.Tensor]:
            return (F.cross_entropy(xc.to(acc), yc, reduction="none"),)

        grad = torch.is_grad_enabled() and x.requires_grad
        return _map_rows(nll, _chunk_rows(chunk_size, x.shape[-1]), x, y, grad=grad)[0]
    _check_head(x, head_weight)
    _check_targets(y, head_weight.shape[0], ignore_index)
    dtype = _autocast_dtype(head_weight.device) or head_weight.dtype
    return _LinearNLL.apply(x, head_weight, y, _chunk_rows(chunk_size, head_weight.shape[0]), dtype)


# ---- cross-entropy and log-probs ----------------------------------------------------------------


def masked_cross_entropy(
    hidden: torch.Tensor,
    head_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, int]:
    """(loss_sum, n_tokens): the summed next-token cross-entropy (a 0-dim fp32 tensor) over the
    n_tokens positions whose label is not ignore_index.

    hidden (..., D) final hidden states (after the final norm); head_weight (V, D) the output head
    (None: `hidden` are logits (..., V)); labels (...) shifted labels (see `shift_labels`).
    chunk_size: tokens projected at a time (None: about LOGITS_PER_CHUNK logits per chunk); only the
    labelled positions are projected at all. Divide loss_sum by the token count of the whole
    (accumulated, all-reduced) batch for a per-token mean; `masked_cross_entropy_mean` divides by
    this call's own count."""
    x, y, _ = _select(hidden, labels, ignore_index)
    return _selected_nll(x, head_weight, y, chunk_size, ignore_index).sum(), y.numel()


def masked_cross_entropy_mean(
    hidden: torch.Tensor,
    head_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The mean cross-entropy per labelled token (0 when no token is labelled): what transformers'
    `LlamaForCausalLM(input_ids, labels=...)` returns as `loss`. Arguments as `masked_cross_entropy`."""
    loss_sum, n = masked_cross_entropy(hidden, head_weight, labels, ignore_index=ignore_index,
                                       chunk_size=chunk_size)
    return loss_sum / max(n, 1)


def token_logps(
    hidden: torch.Tensor,
    head_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log p(labels[...] | position) in fp32, shaped like labels (...), 0 where labels == ignore_index.
    Arguments as `masked_cross_entropy`; chunked the same way."""
    x, y, idx = _select(hidden, labels, ignore_index)
    nll = _selected_nll(x, head_weight, y, chunk_size, ignore_index)
    out = torch.zeros(labels.numel(), dtype=nll.dtype, device=nll.device)
    return out.index_copy(0, idx, -nll).view(labels.shape)


def sequence_logps(
    hidden: torch.Tensor,
    head_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    average: bool = False,
) -> torch.Tensor:
    """Per-sequence log-probability (B,) in fp32: the sum over t of log p(labels[b, t]) for hidden
    (B, T, D) with head (V, D) (or logits (B, T, V) with head_weight None) and labels (B, T);
    average=True divides each by its number of labelled tokens (IPO's length-normalised log-probs).
    These are the `*_logps` inputs of `dpo_loss`."""
    if labels.dim() != 2:
        raise ValueError(f"labels must be (batch, seq), got {tuple(labels.shape)}")
    logps = token_logps(hidden, head_weight, labels, ignore_index=ignore_index, chunk_size=chunk_size).sum(-1)
    if average:
        logps = logps / (labels != ignore_index).sum(-1).clamp(min=1)
    return logps


# ---- DPO ----------------------------------------------------------------------------------------


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen_rewards, rejected_rewards) of Direct Preference Optimization.

    All four inputs are per-pair sequence log-probs (B,) (`sequence_logps`); the reference ones are
    constants (detached here: precomputed, or from a frozen copy under no_grad). With
    z = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected):
      "sigmoid" (DPO): -(1 - eps) * log sigmoid(beta * z) - eps * log sigmoid(-beta * z), where
                       eps = label_smoothing in [0, 0.5] is the assumed rate of flipped labels
                       (conservative DPO); eps = 0 is the paper's loss.
      "ipo":           (z - 1 / (2 * beta))**2 (IPO; the paper uses length-averaged log-probs:
                       `sequence_logps(..., average=True)`); label_smoothing must be 0.
    loss is reduced over pairs by `reduction` ("mean", "sum" or "none" for (B,)); the rewards (B,)
    are beta * (policy - reference) log-ratios, detached, for logging (margin, accuracy)."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(DPO_LOSS_TYPES)}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing applies to the sigmoid loss only, not to IPO")
    shape = policy_chosen_logps.shape
    for name, t in (("policy_rejected_logps", policy_rejected_logps), ("ref_chosen_logps", ref_chosen_logps),
                    ("ref_rejected_logps", ref_rejected_logps)):
        if t.shape != shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != policy_chosen_logps shape {tuple(shape)}")
    acc = _acc_dtype(policy_chosen_logps.dtype)
    pc, pr = policy_chosen_logps.to(acc), policy_rejected_logps.to(acc)
    rc, rr = ref_chosen_logps.detach().to(acc), ref_rejected_logps.detach().to(acc)
    z = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * z)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * z)
    else:
        losses = (z - 1.0 / (2.0 * beta)) ** 2
    chosen_rewards = beta * (pc - rc).detach()
    rejected_rewards = beta * (pr - rr).detach()
    return _reduce(losses, reduction), chosen_rewards, rejected_rewards


# ---- knowledge distillation ------------------------------------------------------------------


class DistillationLoss(NamedTuple):
    """loss = alpha * T**2 * kd + (1 - alpha) * ce; kd and ce are reduced like loss (per-token
    means, or sums with reduction="sum") and kept in the graph; n_tokens counts the labelled ones."""

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    n_tokens: int


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    head_weight: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    reduction: str = "mean",
) -> DistillationLoss:
    """Knowledge distillation: forward KL(teacher_T || student_T) per token at temperature T, scaled
    by T**2 (so its gradients keep their size as T changes), mixed with the next-token CE on labels:
    loss = alpha * T**2 * KL + (1 - alpha) * CE, over the positions where labels != ignore_index.

    student: logits (..., V), or final hidden states (..., D) when head_weight (V, D) is given (the
    logits are then made chunk by chunk and never all at once). teacher (a constant, detached):
    logits (..., V), or a pair (topk_ids (..., K) int, topk_logps (..., K)) of the teacher's k most
    likely tokens and their log-probs; these are renormalised over the k at temperature T
    (softmax(topk_logps / T)) and compared with the student's full-vocabulary tempered log-probs at
    those ids, which equals the full KL when k = V. labels (...) shifted labels (`shift_labels`).
    reduction: "mean" per labelled token, or "sum" (divide by the batch's token count yourself)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if head_weight is not None:
        _check_head(student, head_weight)
    vocab = head_weight.shape[0] if head_weight is not None else student.shape[-1]
    x, y, idx = _select(student, labels, ignore_index)
    _check_targets(y, vocab, ignore_index)

    topk = not isinstance(teacher, torch.Tensor)
    if topk:
        if len(teacher) != 2:
            raise ValueError("teacher must be logits or a pair (topk_ids, topk_logps)")
        ids, lps = teacher
        if ids.shape != lps.shape or ids.shape[:-1] != labels.shape or ids.shape[-1] > vocab:
            raise ValueError(f"topk_ids {tuple(ids.shape)} and topk_logps {tuple(lps.shape)} must both be "
                             f"{tuple(labels.shape)} + (k,) with k <= {vocab}")
        k = ids.shape[-1]
        ids = ids.reshape(-1, k).index_select(0, idx)
        _check_targets(ids, vocab, None)
        teacher_rows: tuple[torch.Tensor, ...] = (ids, lps.detach().reshape(-1, k).index_select(0, idx))
    else:
        if teacher.shape != labels.shape + (vocab,):
            raise ValueError(f"teacher logits must be {tuple(labels.shape) + (vocab,)}, got {tuple(teacher.shape)}")
        teacher_rows = (teacher.detach().reshape(-1, vocab).index_select(0, idx),)

    def rows(xc: torch.Tensor, yc: torch.Tensor, *tc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = xc if head_weight is None else F.linear(xc.to(head_weight.dtype), head_weight)
        s = logits.to(_acc_dtype(logits.dtype))
        ce = -s.log_softmax(-1).gather(1, yc[:, None]).squeeze(1)
        log_q = (s if temperature == 1.0 else s / temperature).log_softmax(-1)
        if topk:
            log_q = log_q.gather(1, tc[0])
            t = tc[1].to(s.dtype)
        else:
            t = tc[0].to(s.dtype)
        log_p = (t if temperature == 1.0 else t / temperature).log_softmax(-1)
        p = log_p.exp()
        kd = (torch.where(p > 0, p * log_p, 0.0) - p * log_q).sum(-1)  # 0 * log 0 = 0
        return kd, ce

    chunk = _chunk_rows(chunk_size, vocab)
    grad = torch.is_grad_enabled() and (x.requires_grad or (head_weight is not None and head_weight.requires_grad))
    kd_rows, ce_rows = _map_rows(rows, chunk, x, y, *teacher_rows, grad=grad)
    n = y.numel()
    kd, ce = kd_rows.sum(), ce_rows.sum()
    if reduction == "mean":
        kd, ce = kd / max(n, 1), ce / max(n, 1)
    loss = alpha * temperature**2 * kd + (1.0 - alpha) * ce
    return DistillationLoss(loss, kd, ce, n)
