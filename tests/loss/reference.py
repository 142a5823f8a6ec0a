"""An independent float64 single-process reference of one training step's loss, written plainly.

It shares no code with slime_entropy (only the config dataclasses as plain data). Every sample is handled on its
own with full sequences and the full vocabulary; distributed runs are compared against it.

The step is described by ``RefSample``s and a list of threshold *populations* (lists of sample indices that share
one threshold: a micro-batch across DP x CP ranks for scope 'dp', one rank's micro-batch for scope 'local').
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from slime_entropy.loss.config import LossConfig


@dataclass
class RefSample:
    tokens: torch.Tensor  # [L] int64, prompt + response
    prompt_len: int
    logits: torch.Tensor  # [L, V] float64; row p predicts token p + 1
    loss_mask: torch.Tensor  # [R] int64 over the response
    advantages: torch.Tensor  # [R]
    old_log_probs: torch.Tensor  # [R]
    ref_log_probs: torch.Tensor  # [R]
    rollout_log_probs: torch.Tensor  # [R]

    @property
    def total_len(self) -> int:
        return int(self.tokens.numel())

    @property
    def response_len(self) -> int:
        return self.total_len - self.prompt_len


def kept_count(n: int, rho: float) -> int:
    return math.ceil(Fraction(rho).limit_denominator(10**6) * n)


def logprob_entropy(sample: RefSample, logits: torch.Tensor, temperature: float, vocab_size: int | None):
    """Full-vocabulary float64 log-probs and entropies of the response tokens."""
    z = logits[sample.prompt_len - 1 : sample.total_len - 1] / temperature
    if vocab_size is not None:
        z = z[:, :vocab_size]
    logp_all = torch.log_softmax(z, dim=-1)
    targets = sample.tokens[sample.prompt_len :]
    logp = logp_all.gather(1, targets.view(-1, 1)).view(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def approx_kl(logp, ref, kind):
    lr = logp - ref
    if kind in ("kl", "k1"):
        return lr
    if kind == "k2":
        return lr**2 / 2
    k3 = torch.exp(-lr) - 1 + lr
    return k3.clamp(-10, 10) if kind == "low_var_kl" else k3


def reference_step(
    samples: list[RefSample],
    config: LossConfig,
    populations: list[list[int]],
    *,
    global_batch_size: int | None = None,
) -> dict:
    """Loss, d loss / d logits (per sample, [L, V]) and the true filter figures of one step.

    Per-sample mode: L = (1/gbs) * sum_i (pg_i - c_H * H_i + c_KL * KL_i), each a per-sample mean.
    Per-token mode: every term is a token mean over its own tokens (pg over kept tokens when the filter is on
    with the 'kept' denominator; otherwise over valid tokens, counting each sample at least once).
    """
    pol, filt = config.policy, config.entropy_filter
    leaves = [s.logits.clone().requires_grad_(True) for s in samples]
    logps, ents = [], []
    for s, leaf in zip(samples, leaves, strict=False):
        logp, ent = logprob_entropy(s, leaf, pol.temperature, config.kernel.vocab_size)
        logps.append(logp)
        ents.append(ent if pol.entropy_coef != 0 else ent.detach())
    valid = [s.loss_mask > 0 for s in samples]

    kept = [v.clone() for v in valid]
    figures = []
    if filt.enabled:
        for pop in populations:
            values = torch.cat([ents[i].detach()[valid[i]] for i in pop]) if pop else torch.zeros(0)
            n = values.numel()
            if n == 0:
                figures.append(dict(ratio=0.0, tau=0.0, mean=0.0, kept_mean=0.0, n=0, k=0))
                for i in pop:
                    kept[i] = torch.zeros_like(valid[i])
                continue
            k = kept_count(n, filt.keep_fraction)
            tau = torch.sort(values, descending=True).values[k - 1]
            for i in pop:
                kept[i] = valid[i] & (ents[i].detach() >= tau)
            kept_values = values[values >= tau]
            figures.append(
                dict(
                    ratio=kept_values.numel() / n,
                    tau=float(tau),
                    mean=float(values.mean()),
                    kept_mean=float(kept_values.mean()),
                    n=n,
                    k=kept_values.numel(),
                )
            )

    pg_terms, ent_terms, kl_terms, clip_terms, ppokl_terms, pg_tok_all = [], [], [], [], [], []
    for i, s in enumerate(samples):
        logp, ent = logps[i], ents[i]
        old, adv = s.old_log_probs.double(), s.advantages.double()
        m = valid[i].double()
        w = kept[i].double() if filt.enabled else m
        if pol.advantage_alpha > 0:
            adv = adv + torch.minimum(pol.advantage_alpha * ent.detach(), adv.abs() / pol.advantage_kappa)
        lo, hi = 1 - pol.eps_clip, 1 + pol.eps_clip_high
        if pol.mode in ("ppo", "gspo"):
            if pol.mode == "gspo":
                log_ratio = ((logp - old) * w).sum() / w.sum().clamp_min(1)
                ratio = torch.exp(log_ratio).expand_as(logp)
                ppo_kl = (-log_ratio).expand_as(logp)
            else:
                ratio = torch.exp(logp - old)
                ppo_kl = old - logp
            a = -ratio * adv
            b = -ratio.clamp(lo, hi) * adv
            loss_tok = torch.maximum(a, b)
            clip_tok = (b > a).double()
            if pol.dual_clip_c is not None:
                loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, -pol.dual_clip_c * adv), loss_tok)
        elif pol.mode == "gpg":
            loss_tok = -adv * logp
            clip_tok = torch.zeros_like(logp)
            ppo_kl = old - logp
        elif pol.mode == "cispo":
            ratio = torch.exp(logp - old).detach()
            clipped = ratio.clamp(lo, hi)
            loss_tok = -clipped * adv * logp
            clip_tok = (clipped != ratio).double()
            ppo_kl = old - logp
        elif pol.mode == "gmpo":
            x = logp - old
            sign = torch.sign(adv)
            pess = sign * torch.minimum(sign * x, sign * x.clamp(-pol.eps_clip, pol.eps_clip_high))
            seq_ratio = torch.exp((pess * w).sum() / w.sum().clamp_min(1))
            seq_adv = (adv * w).sum() / w.sum().clamp_min(1)
            loss_tok = (-seq_adv * seq_ratio).expand_as(logp)
            clip_tok = (pess != x).double()
            ppo_kl = old - logp
        elif pol.mode == "kl_cov":
            # statistics over the sample set of one call: the caller passes one micro-batch at a time
            raise NotImplementedError("kl_cov is checked with reference_kl_cov")
        else:
            raise NotImplementedError(pol.mode)
        if pol.use_tis:
            loss_tok = loss_tok * torch.exp(old - s.rollout_log_probs.double()).clamp(pol.tis_clip_low, pol.tis_clip)
        pg_tok_all.append(loss_tok)
        denominator_pg = w.sum() if (filt.enabled and filt.denominator == "kept") else m.sum()
        pg_num = (loss_tok * w).sum()
        pg_terms.append((pg_num, denominator_pg))
        ent_w = w if (filt.enabled and filt.mask_entropy_loss) else m
        ent_den = denominator_pg if ent_w is w else m.sum()
        ent_terms.append(((ent * ent_w).sum(), ent_den))
        if pol.use_kl_loss:
            kl_tok = approx_kl(logp, s.ref_log_probs.double(), pol.kl_loss_type)
            kl_w = w if (filt.enabled and filt.mask_kl_loss) else m
            kl_den = denominator_pg if kl_w is w else m.sum()
            kl_terms.append(((kl_tok * kl_w).sum(), kl_den))
        clip_terms.append(((clip_tok * m).sum(), m.sum()))
        ppokl_terms.append(((ppo_kl * m).sum(), m.sum()))

    def per_sample_mean(terms):
        return sum(num / den.clamp_min(1) for num, den in terms)

    num_samples = len(samples)
    gbs = global_batch_size or num_samples
    if not pol.per_token_loss:
        pg = per_sample_mean(pg_terms)
        ent = per_sample_mean(ent_terms)
        loss = pg - pol.entropy_coef * ent
        if pol.use_kl_loss:
            loss = loss + pol.kl_loss_coef * per_sample_mean(kl_terms)
        objective = loss / gbs
        reported = {
            "pg_loss": pg.detach() / num_samples,
            "entropy_loss": ent.detach() / num_samples,
            "pg_clipfrac": per_sample_mean(clip_terms).detach() / num_samples,
            "ppo_kl": per_sample_mean(ppokl_terms).detach() / num_samples,
        }
    else:
        kept_norm = filt.enabled and filt.denominator == "kept"
        if kept_norm:
            # Megatron normalises by the kept count; a term over valid tokens is rescaled per population by
            # kept/valid, so it is that population's valid-token mean (weighted by kept counts across populations)
            pg_count = max(sum(int(k.sum()) for k in kept), 1)
            scale = {}
            for pop, fig in zip(populations, figures, strict=False):
                for i in pop:
                    scale[i] = fig["k"] / max(fig["n"], 1)

            def valid_mean(terms, masked=False):
                if masked:
                    return sum(num for num, _ in terms) / pg_count
                return sum(num * scale[i] for i, (num, _) in enumerate(terms)) / pg_count

        else:
            # slime: every sample counts at least one token
            pg_count = sum(max(int(m.sum()), 1) for m in valid)

            def valid_mean(terms, masked=False):
                return sum(num for num, _ in terms) / pg_count

        pg = sum(num for num, _ in pg_terms) / pg_count
        ent = valid_mean(ent_terms, masked=filt.enabled and filt.mask_entropy_loss)
        loss = pg - pol.entropy_coef * ent
        if pol.use_kl_loss:
            loss = loss + pol.kl_loss_coef * valid_mean(kl_terms, masked=filt.enabled and filt.mask_kl_loss)
        objective = loss
        reported = {
            "pg_loss": pg.detach(),
            "entropy_loss": ent.detach(),
            "pg_clipfrac": valid_mean(clip_terms).detach(),
            "ppo_kl": valid_mean(ppokl_terms).detach(),
        }
    objective.backward()
    reported = {key: float(value) for key, value in reported.items()}
    return {
        "loss": float(objective.detach()),
        "grads": [leaf.grad for leaf in leaves],
        "log_probs": [lp.detach() for lp in logps],
        "entropy": [e.detach() for e in ents],
        "kept": kept,
        "figures": figures,
        "reported": reported,
    }
