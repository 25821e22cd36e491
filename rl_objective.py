"""The RL objective of 03_rl_grpo.py: group advantages, per-token log-probs of completions, and
the clipped policy loss (GRPO token ratios or GSPO sequence ratios; Kimina's seq_sum_norm,
token_mean or seq_mean aggregation; optional k3 KL). One concern, kept apart from the stage's
loop so it can be read and checked on its own against verl's core_algos.

`cfg` is the stage's Settings (any object with the attributes read here).

Aligned with what Kimina's verl run computes (verl 0.9.1 trainer/ppo/core_algos.py, checked by
tests/test_verl.py on random tensors): GRPO advantages with the unbiased std when normalised and
verl's group-of-one rule (mean 0, std 1); the vanilla clipped loss with the log-ratio clamped to
[-20, 20] and dual clip for negative advantages (clip_ratio_c, verl's default 3.0); GSPO's
sequence ratio (log-space clamp at 10). Departures: the k3 KL term is added per token inside the
aggregation (verl keeps it as a separate loss term), and GSPO's ratio carries the gradient of the
mean token log-ratio directly, which equals verl's token-level form in value and gradient.
"""
import torch


def group_advantages(rollouts: list, cfg) -> tuple[list, int]:
    """reward - group mean (optionally / unbiased std + 1e-6); groups are consecutive runs of
    group_size; a group of one has mean 0 and std 1 (verl). Returns the rollouts to train on and
    the number of zero-variance groups."""
    kept, zero_var = [], 0
    for g in range(0, len(rollouts), cfg.group_size):
        group = rollouts[g:g + cfg.group_size]
        rewards = torch.tensor([r.reward for r in group], dtype=torch.float64)
        mean, std = (rewards.mean(),
                     rewards.std()) if len(group) > 1 else (torch.tensor(0.0), torch.tensor(1.0))
        adv = rewards - mean
        if cfg.adv_std_norm:
            adv = adv / (std + 1e-6)
        for r, a in zip(group, adv.tolist()):
            r.advantage = a
        if float(rewards.max() - rewards.min()) == 0.0:
            zero_var += 1
            if cfg.skip_zero_variance:
                continue
        kept += group
    return kept, zero_var


# ---------------------------------------------------------------------------------------------
# Policy loss
# ---------------------------------------------------------------------------------------------

def sequence_logprobs(model, batch: list[tuple], temperature: float, device,
                      share_prompts: int = 0):
    """Per-token log-probs (and entropies) of each completion given its prompt: [B, T] with a mask.

    Items are (prompt_ids, completion_ids) or (prompt_ids, completion_ids, keep): keep[t] = 0
    marks completion tokens the policy did not write (a tool's answer spliced into a
    tool-integrated rollout): they condition what follows but are masked out of the loss, the
    importance ratio and the entropy, as StepFun's tool-integrated RL does.
    Prompts are left-padded so every completion starts at the same column; the vocabulary
    projection then runs only on completion positions (logits_to_keep), not on the prompts.
    share_prompts > 0: completions of the same prompt (a GRPO group) run in one sequence after
    a single copy of it, up to that many tokens a sequence (shared_prompt_logits)."""
    t_max = max(len(item[1]) for item in batch)
    targets = torch.zeros((len(batch), t_max), dtype=torch.long)
    mask = torch.zeros((len(batch), t_max))
    for b, (p, c, *keep) in enumerate(batch):
        if keep and len(keep[0]) != len(c):
            raise ValueError(f"rollout {b}: keep mask has {len(keep[0])} entries for "
                             f"{len(c)} completion tokens")
        targets[b, :len(c)] = torch.tensor(c)
        mask[b, :len(c)] = torch.tensor(keep[0], dtype=torch.float) if keep else 1
    targets, mask = targets.to(device), mask.to(device)
    if share_prompts:
        rows = prompt_rows(batch, share_prompts)
        if len(rows) < len(batch):
            logits = shared_prompt_logits(model, batch, rows, device)
            return token_stats(logits, targets, mask, temperature)
    p_max = max(len(item[0]) for item in batch)
    ids = torch.zeros((len(batch), p_max + t_max), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, (p, c, *_) in enumerate(batch):
        ids[b, p_max - len(p):p_max] = torch.tensor(p)
        ids[b, p_max:p_max + len(c)] = torch.tensor(c)
        attn[b, p_max - len(p):p_max + len(c)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    ids, attn, pos = (t.to(device) for t in (ids, attn, pos))
    # logits at columns p_max-1 .. p_max+t_max-2 predict the completion tokens
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos,
                   logits_to_keep=t_max + 1).logits[:, :t_max]
    return token_stats(logits, targets, mask, temperature)


def token_stats(logits, targets, mask, temperature: float):
    """Log-prob of each target token and the entropy at its position (float32), masked."""
    lsm = torch.log_softmax(logits.float() / temperature, -1)
    logp = lsm.gather(-1, targets[..., None]).squeeze(-1) * mask
    ent = -(lsm.exp() * lsm).sum(-1) * mask
    return logp, ent, mask


def prompt_rows(batch: list[tuple], max_len: int) -> list[list[int]]:
    """Items of the batch grouped into rows: one prompt, then as many of its completions as fit
    in max_len tokens (a completion that does not fit starts a new row with its own copy)."""
    rows, open_row, used = [], {}, []
    for b, (p, c, *_) in enumerate(batch):
        r = open_row.get(tuple(p))
        if r is not None and used[r] + len(c) <= max_len:
            rows[r].append(b)
            used[r] += len(c)
        else:
            open_row[tuple(p)] = len(rows)
            rows.append([b])
            used.append(len(p) + len(c))
    return rows


def shared_prompt_logits(model, batch: list[tuple], rows: list[list[int]], device):
    """sequence_logprobs' logits [B, T, V] with each row's prompt run once: [prompt][c1][c2]...,
    completion j attending to the prompt and to itself only (a block mask), at the positions it
    would have after its prompt. The prompt's last position predicts every completion's first
    token; each completion's own positions predict the rest. The same values as one sequence
    per item (tests/test_grpo.py); fewer tokens when a group's prompt is long against its
    completions, as on the CPU toy."""
    width = max(len(batch[r[0]][0]) + sum(len(batch[b][1]) for b in r) for r in rows)
    t_max = max(len(item[1]) for item in batch)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros_like(ids)
    allowed = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    src_row = torch.zeros((len(batch), t_max), dtype=torch.long)
    src_col = torch.zeros((len(batch), t_max), dtype=torch.long)
    for r, members in enumerate(rows):
        p = batch[members[0]][0]
        n_p = len(p)
        ids[r, :n_p] = torch.tensor(p)
        pos[r, :n_p] = torch.arange(n_p)
        allowed[r, 0, :n_p, :n_p] = torch.tril(torch.ones(n_p, n_p, dtype=torch.bool))
        at = n_p
        for b in members:
            c = batch[b][1]
            n = len(c)
            ids[r, at:at + n] = torch.tensor(c)
            pos[r, at:at + n] = torch.arange(n_p, n_p + n)
            allowed[r, 0, at:at + n, :n_p] = True
            allowed[r, 0, at:at + n, at:at + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            src_row[b] = r
            src_col[b] = n_p - 1                       # padding reads a real column, masked
            src_col[b, 1:n] = torch.arange(at, at + n - 1)
            at += n
    allowed |= torch.eye(width, dtype=torch.bool)     # padding attends to itself (no NaN)
    first = int(src_col[:, 0].min())
    ids, pos, allowed = (t.to(device) for t in (ids, pos, allowed))
    logits = model(input_ids=ids, attention_mask=allowed, position_ids=pos,
                   logits_to_keep=width - first).logits
    return logits[src_row.to(device), (src_col - first).to(device)]


def policy_loss(logp, old_logp, adv, mask, cfg, max_len: int, ref_logp=None,
                n_seqs_total: int | None = None, n_tokens_total: int | None = None):
    """Clipped surrogate with asymmetric clipping, aggregated as asked.

    logp, old_logp, mask: [B, T]; adv: [B]. n_*_total: the mini-batch totals when this is one
    micro-batch of it, so micro-batch losses add up to the mini-batch loss.
    Returns (loss, stats)."""
    log_ratio = (logp - old_logp) * mask
    if cfg.ratio_level == "sequence":   # GSPO: exp(mean token log-ratio), one ratio per sequence
        seq = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)
        log_ratio = seq.clamp(max=10.0)[:, None].expand_as(logp)
    else:
        log_ratio = log_ratio.clamp(-20.0, 20.0)   # as verl, for stability
    ratio = torch.exp(log_ratio)
    a = adv[:, None]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high) * a
    per_token = -torch.minimum(unclipped, clipped)
    if cfg.ratio_level == "token" and cfg.clip_ratio_c > 1:   # dual clip: a negative advantage's
                                                              # loss
        # is capped
        per_token = torch.where(a < 0, torch.minimum(per_token, -a * cfg.clip_ratio_c), per_token)
    if cfg.kl_coef and ref_logp is not None:   # k3 estimator of KL(pi || ref)
        d = ref_logp - logp
        per_token = per_token + cfg.kl_coef * (torch.exp(d) - d - 1)
    per_token = per_token * mask
    n_seqs = n_seqs_total or logp.shape[0]
    n_tokens = n_tokens_total or float(mask.sum())
    if cfg.loss_agg == "seq_sum_norm":
        loss = (per_token.sum(-1) / max_len).sum() / n_seqs
    elif cfg.loss_agg == "token_mean":
        loss = per_token.sum() / n_tokens
    else:
        loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / n_seqs
    with torch.no_grad():
        active = ((unclipped > clipped) & (mask > 0)).float().sum()
    return loss, {"clipped_tokens": float(active), "tokens": float(mask.sum())}


def trajectory_advantages(trajectories: list[list], group_size: int, credit: str = "trajectory",
                          std_norm: bool = False,
                          skip_zero_variance: bool = False) -> tuple[list, int]:
    """Advantages of multi-round (repair) rollouts: `trajectories` holds each trajectory's rounds
    (objects with .reward, .advantage), consecutive runs of group_size trajectories per statement.
    credit "trajectory" (OProver counts a trajectory solved if any round passes): R = the best
    round reward, A = R - group mean (/ unbiased std), and every round of the trajectory is
    trained with A, so an attempt that led to a fix is credited with it. credit "round": each
    round's own reward against the mean of the group's rounds of the same index (a group of one:
    mean 0, std 1, as verl). Returns the rounds to train on and the zero-variance groups."""
    if credit not in ("trajectory", "round"):
        raise ValueError(f"credit must be trajectory or round, got {credit!r}")
    kept, zero_var = [], 0
    for g in range(0, len(trajectories), group_size):
        group = trajectories[g:g + group_size]
        if credit == "trajectory":
            cohorts = [[(traj, max(r.reward for r in traj)) for traj in group]]
        else:
            depth = max(len(t) for t in group)
            cohorts = [[([t[k]], t[k].reward) for t in group if len(t) > k] for k in range(depth)]
        flat = []
        for cohort in cohorts:
            rewards = torch.tensor([rew for _, rew in cohort], dtype=torch.float64)
            mean, std = (rewards.mean(),
                         rewards.std()) if len(cohort) > 1 else (torch.tensor(0.0),
                                                                 torch.tensor(1.0))
            adv = (rewards - mean) / (std + 1e-6) if std_norm else rewards - mean
            for (rounds, _), a in zip(cohort, adv.tolist()):
                for r in rounds:
                    r.advantage = a
            flat.append(float(rewards.max() - rewards.min()))
        if max(flat) == 0.0:
            zero_var += 1
            if skip_zero_variance:
                continue
        kept += [r for traj in group for r in traj]
    return kept, zero_var
