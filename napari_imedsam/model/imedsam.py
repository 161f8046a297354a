"""The I-MedSAM network: adapted encoder -> box features -> implicit decoder queried at any point."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneParts
from .box_decoder import BoxDecoder, BoxFeatures
from .config import IMedSAMConfig
from .encoders import AdaptedTinyViTEncoder, AdaptedViTEncoder
from .inr import CoarseINR, FineINR, positional_encoding, topk_uncertain

PART_NAMES = ("lora", "fa", "decoder", "mask_decoder", "inr")
#: Parts every adapter file stores; ``mask_decoder`` (millions of SAM's own weights) only once it was trained.
ALWAYS_SAVED = ("lora", "fa", "decoder", "inr")


class IMedSAM(nn.Module):
    """Points are given in encoder-input pixels (x right, y down, pixel edges at integers) together with
    ``valid_hw``, the size of the resized image inside the padded input. The INR sees the point relative to
    the image (not the padding), so the same model renders any resolution or window of the image."""

    #: Skip the INR where the bound settles the answer (switch off to check the skip against every point).
    skip_settled: bool = True

    def __init__(self, parts: BackboneParts, config: IMedSAMConfig):
        super().__init__()
        self.config = config
        self.backbone_name = parts.name
        self.backbone_hash = parts.weights_hash
        self.image_size = parts.image_size
        mean, std = torch.tensor(parts.pixel_mean), torch.tensor(parts.pixel_std)
        wrapper = AdaptedViTEncoder if parts.kind == "vit" else AdaptedTinyViTEncoder
        self.encoder = wrapper(parts.image_encoder, config, mean, std)
        self.box_decoder = BoxDecoder(parts.prompt_encoder, parts.mask_decoder)
        self.point_dim = (
            self.box_decoder.upscaled_channels + self.box_decoder.pe_channels + 2 + 4 * config.pe_levels
            + (2 if config.box_coords else 0) + 1
        )
        self.coarse = CoarseINR(self.point_dim, config.coarse_hidden, config.coarse_feature, config.dropout,
                                zero_logit=config.residual)
        self.fine = FineINR(self.point_dim + config.coarse_feature, config.fine_hidden, zero_out=config.residual)
        self.set_trainable(ALWAYS_SAVED)  # the paper's trainable set; mask_decoder is opt-in
        # SAM's own mask-decoder weights, to tell whether they were tuned and to restore them when an adapter
        # file without them is loaded (a plain attribute: not in state_dict, copied by deepcopy)
        self._pristine_mask_decoder = {n: p.detach().cpu().clone()
                                       for n, p in self.named_part_parameters()["mask_decoder"] if not p.is_meta}
        self._fingerprints: dict[tuple[str, ...], tuple[tuple, str]] = {}  # parts -> (tensor state, hash)
        self._groups_memo: tuple[tuple[int, ...], dict] | None = None  # see _part_groups

    def train(self, mode: bool = True) -> IMedSAM:
        """The frozen backbone always runs in eval mode (BatchNorm statistics and TinyViT's attention-bias
        cache must not change); only the INR's dropout follows ``mode``."""
        super().train(mode)
        self.encoder.backbone.eval()
        self.box_decoder.eval()
        return self

    # ---- parameters -------------------------------------------------------------------------------------
    def named_part_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parts: LoRA, FA, decoder (SAM's output_upscaling), mask_decoder (SAM's two-way
        transformer, output tokens, hypernetwork MLPs and IoU head) and the INR heads."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in PART_NAMES}
        for name, p in self.named_parameters():
            if name.startswith("encoder.") and any(f".{s}" in name for s in ("q_a", "q_b", "v_a", "v_b")):
                groups["lora"].append((name, p))
            elif name.startswith(("encoder.fa.", "encoder.fa_embed.")):
                groups["fa"].append((name, p))
            elif name.startswith("box_decoder.mask_decoder.output_upscaling."):
                groups["decoder"].append((name, p))
            elif name.startswith("box_decoder.mask_decoder."):
                groups["mask_decoder"].append((name, p))
            elif name.startswith(("coarse.", "fine.")):
                groups["inr"].append((name, p))
        return groups

    def _part_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """``named_part_parameters()``, found once per model (walking the backbone's modules costs ~5 ms, and
        ``fingerprint`` runs on every query). Adapters load, train and move in place, so the Parameter objects
        never change after construction; a replaced submodule of the model invalidates the memo."""
        owners = tuple(id(m) for m in self.children())
        if self._groups_memo is None or self._groups_memo[0] != owners:
            self._groups_memo = (owners, self.named_part_parameters())
        return self._groups_memo[1]

    def set_trainable(self, parts: tuple[str, ...] | list[str]) -> None:
        unknown = set(parts) - set(PART_NAMES)
        if unknown:
            raise ValueError(f"Unknown trainable parts {sorted(unknown)}; choose from {PART_NAMES}.")
        for p in self.parameters():
            p.requires_grad_(False)
        for part, params in self.named_part_parameters().items():
            for _, p in params:
                p.requires_grad_(part in parts)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor I-MedSAM adds to or may tune in the backbone (the trainer's state)."""
        return {n: p.detach() for params in self.named_part_parameters().values() for n, p in params}

    def mask_decoder_tuned(self) -> bool:
        """Whether SAM's mask-decoder weights differ from the backbone's own."""
        pristine = self._pristine_mask_decoder
        return any(n not in pristine or not torch.equal(p.detach().cpu(), pristine[n])
                   for n, p in self.named_part_parameters()["mask_decoder"])

    def saved_parts(self) -> tuple[str, ...]:
        """The parts an adapter file of this model stores: the small ones always, the mask decoder if tuned."""
        return ALWAYS_SAVED + (("mask_decoder",) if self.mask_decoder_tuned() else ())

    def file_state_dict(self, parts: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """What an adapter file stores (``parts``, default ``saved_parts()``)."""
        groups = self.named_part_parameters()
        return {n: p.detach() for part in (parts or self.saved_parts()) for n, p in groups[part]}

    def reset_mask_decoder(self) -> None:
        """Back to the backbone's own mask-decoder weights (an adapter file that does not carry them)."""
        with torch.no_grad():
            for n, p in self.named_part_parameters()["mask_decoder"]:
                p.copy_(self._pristine_mask_decoder[n].to(p.device, p.dtype))

    def fingerprint(self, parts: tuple[str, ...] | str = PART_NAMES) -> str:
        """Content hash of the tensors of ``parts`` (``"encoder"``: LoRA + FA, which change the image
        embedding; ``"decoder"``: the rest; or part names): the key of the embedding and box caches and the
        identity of a saved version. The hash is recomputed only when a tensor was replaced or changed in
        place (load_adapters, a training step, ``copy_``), detected from tensor version counters, so asking
        per query costs no device-to-host copy."""
        parts = {"encoder": ("lora", "fa"), "decoder": ("decoder", "mask_decoder", "inr")}.get(parts, parts)
        parts = (parts,) if isinstance(parts, str) else tuple(parts)
        groups = self._part_groups()
        params = [(n, p) for part in parts for n, p in groups[part]]
        state = tuple((n, p.data_ptr(), p._version, p.dtype, p.device) for n, p in params)
        cached = self._fingerprints.get(parts)
        if cached is None or cached[0] != state:
            digest = hashlib.sha256()
            for name, p in sorted(params, key=lambda item: item[0]):
                digest.update(name.encode())
                digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
            cached = (state, digest.hexdigest()[:16])
            self._fingerprints[parts] = cached
        return cached[1]

    # ---- forward pieces ---------------------------------------------------------------------------------
    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [0, 1] (padded) -> image embedding (B, C, S/16, S/16)."""
        return self.encoder(images01)

    def decode_box(self, embedding: torch.Tensor, boxes: torch.Tensor) -> BoxFeatures:
        """boxes (B, 4) xyxy in input pixels -> box-conditioned feature maps and SAM's own logit."""
        return self.box_decoder(embedding, boxes)

    def decode_prompt(self, embedding: torch.Tensor, boxes: torch.Tensor | None = None,
                      points: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                      masks: torch.Tensor | None = None) -> BoxFeatures:
        """Any mix of boxes (B, 4), clicks (B, N, 2) + labels (B, N) and a mask prompt (B, 1, M, M), all in
        input pixels -> prompt-conditioned feature maps and SAM's own logit."""
        if boxes is None and points is None:
            raise ValueError("A prompt needs a box or at least one click.")
        return self.box_decoder(embedding, boxes, points, labels, masks)

    def point_inputs(self, feats: BoxFeatures, points: torch.Tensor, valid_hw: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point INR input (B, N, D) and the backbone's own logit at the point (B, N)."""
        size = float(self.image_size)
        grid = (points / size * 2.0 - 1.0).unsqueeze(2).to(feats.upscaled.dtype)  # (B, N, 1, 2)
        up = F.grid_sample(feats.upscaled, grid, mode="bilinear", padding_mode="border", align_corners=False)
        up = up.squeeze(-1).transpose(1, 2)  # (B, N, C_up)
        base = self.base_logit(feats, points)
        pe = self.box_decoder.positional_encoding(points / size).to(up.dtype)
        hw = valid_hw.to(points.dtype)
        p_img = points / hw[:, None, [1, 0]] * 2.0 - 1.0
        parts = [up, pe, positional_encoding(p_img, self.config.pe_levels).to(up.dtype)]
        if self.config.box_coords:
            b = feats.boxes.to(points.dtype)
            centre = (b[:, None, :2] + b[:, None, 2:]) / 2
            half = ((b[:, None, 2:] - b[:, None, :2]) / 2).clamp_min(1.0)
            parts.append(((points - centre) / half).to(up.dtype))
        parts.append(torch.tanh(base / 4.0).unsqueeze(-1))
        return torch.cat(parts, dim=-1), base

    def _combine(self, base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if not self.config.residual:
            return delta
        bound = self.config.residual_bound
        return base + (delta if bound is None else bound * torch.tanh(delta / bound))

    def base_logit(self, feats: BoxFeatures, points: torch.Tensor) -> torch.Tensor:
        """The backbone's own low-resolution logit at points (B, N, 2), sampled bilinearly: (B, N)."""
        grid = (points / float(self.image_size) * 2.0 - 1.0).unsqueeze(2).to(feats.lowres_logit.dtype)
        return F.grid_sample(feats.lowres_logit, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[:, 0, :, 0]

    def settled(self, base: torch.Tensor) -> torch.Tensor | None:
        """Where the answer is settled without the INR: the backbone's logit is beyond the residual bound,
        so no bounded correction can flip its sign. There the final logit is the backbone's and the
        uncertainty is 0, by definition, at inference (None: the INR is needed everywhere)."""
        bound = self.config.residual_bound
        if not self.config.residual or bound is None or not self.skip_settled:
            return None
        return base.abs() > bound

    def mc_variance_of(self, x: torch.Tensor, base: torch.Tensor, seed: int | None = 0,
                       logits: torch.Tensor | None = None) -> torch.Tensor:
        """Variance over ``mc_samples`` dropout passes of the coarse head's probability (fixed draws by
        default, so inference is reproducible; ``seed=None`` draws fresh masks, as in training). ``logits``:
        the passes' logits if already computed."""
        if logits is None:
            logits = self.coarse.mc_logits(x, self.config.mc_samples, seed=seed)
        probs = torch.sigmoid(self._combine(base.unsqueeze(0), logits).float())
        return probs.var(dim=0, unbiased=False)

    def forward_train(self, images01: torch.Tensor | None, boxes: torch.Tensor, points: torch.Tensor,
                      valid_hw: torch.Tensor, embedding: torch.Tensor | None = None,
                      clicks: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Training pass: coarse logits at every point, fine logits at the top-K uncertain points.

        ``embedding`` (from ``encode``) replaces ``images01`` when the encoder is frozen and cached;
        ``clicks`` (points (B, K, 2), labels (B, K), -1 = none) are prompts beside the boxes."""
        emb = self.encode(images01) if embedding is None else embedding
        feats = self.decode_box(emb, boxes) if clicks is None else self.decode_prompt(emb, boxes, *clicks)
        x, base = self.point_inputs(feats, points, valid_hw)
        delta, feat = self.coarse(x, dropout=self.training)
        out = {"coarse": self._combine(base, delta), "base": base}
        if self.config.ugs:
            with torch.no_grad():
                var = self.mc_variance_of(x.detach(), base.detach(), seed=None)
            idx = topk_uncertain(var, self.config.topk)
            xs = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            fs = torch.gather(feat, 1, idx.unsqueeze(-1).expand(-1, -1, feat.shape[-1]))
            bs = torch.gather(base, 1, idx)
            out["fine"] = self._combine(bs, self.fine(torch.cat([xs, fs], dim=-1)))
            out["fine_index"] = idx
        return out

    @torch.no_grad()
    def query(self, feats: BoxFeatures, points: torch.Tensor, valid_hw: torch.Tensor,
              threshold: torch.Tensor | None, counts: dict | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inference at points (B, N, 2): final logits, and the MC variance when UGS is on.

        The fine head replaces the coarse logit where the variance reaches ``threshold`` (per image), the
        top-K cut taken once per box on a reference grid, so a point's value does not depend on which
        other points are rendered with it (any zoom, any window, adaptive or dense). The heads run only
        where the answer is not ``settled`` (a band around the backbone's boundary); ``counts`` (optional)
        accumulates how many points they ran on (``"inr"``) and how many had the fine head (``"fine"``)."""
        base = self.base_logit(feats, points)
        settled = self.settled(base)
        logits = base.clone()
        var = torch.zeros_like(base, dtype=torch.float32) if self.config.ugs else None
        for i in range(points.shape[0]):
            need = slice(None) if settled is None else ~settled[i]
            pts = points[i : i + 1, need]
            if pts.shape[1] == 0:
                continue
            x, b = self.point_inputs(feats.index(i), pts, valid_hw[i : i + 1])
            if self.config.ugs:
                delta, feat, mc = self.coarse.forward_and_mc(x, self.config.mc_samples)
            else:
                delta, feat = self.coarse(x, dropout=False)
            out = self._combine(b, delta)
            if counts is not None:
                counts["inr"] = counts.get("inr", 0) + pts.shape[1]
            if self.config.ugs:
                v = self.mc_variance_of(x, b, logits=mc)
                var[i, need] = v[0]
                if threshold is not None:
                    sel = v >= threshold.view(-1)[i]
                    if counts is not None:
                        counts["fine"] = counts.get("fine", 0) + int(sel.sum())
                    if sel.any():
                        out = out.clone()
                        out[sel] = self._combine(b[sel], self.fine(torch.cat([x[sel], feat[sel]], dim=-1)))
            logits[i, need] = out[0].to(logits.dtype)
        return logits, var

    @torch.no_grad()
    def variance(self, feats: BoxFeatures, points: torch.Tensor, valid_hw: torch.Tensor) -> torch.Tensor:
        """MC-dropout variance of the coarse probability at points (B, N, 2); 0 where the answer is settled."""
        base = self.base_logit(feats, points)
        settled = self.settled(base)
        var = torch.zeros_like(base, dtype=torch.float32)
        for i in range(points.shape[0]):
            need = slice(None) if settled is None else ~settled[i]
            pts = points[i : i + 1, need]
            if pts.shape[1]:
                x, b = self.point_inputs(feats.index(i), pts, valid_hw[i : i + 1])
                var[i, need] = self.mc_variance_of(x, b)[0]
        return var

    @torch.no_grad()
    def uncertainty_threshold(self, feats: BoxFeatures, valid_hw: torch.Tensor) -> torch.Tensor | None:
        """The top-K variance cut of each image, on a ``ugs_reference_grid``-sided grid over the image."""
        if not self.config.ugs:
            return None
        n = self.config.ugs_reference_grid
        out = []
        for i in range(valid_hw.shape[0]):
            h, w = (float(v) for v in valid_hw[i])
            ys = (torch.arange(n, device=valid_hw.device, dtype=torch.float32) + 0.5) * h / n
            xs = (torch.arange(n, device=valid_hw.device, dtype=torch.float32) + 0.5) * w / n
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            pts = torch.stack([gx, gy], dim=-1).reshape(1, -1, 2)
            var = torch.zeros(pts.shape[1], device=pts.device)
            settled = self.settled(self.base_logit(feats.index(i), pts))
            need = slice(None) if settled is None else ~settled[0]  # the settled points' variance is 0
            todo = pts[:, need]
            if todo.shape[1]:  # chunks of points the heads run on: bounded memory for wide heads
                var[need] = torch.cat([self.variance(feats.index(i), chunk, valid_hw[i : i + 1])[0]
                                       for chunk in todo.split(4096, dim=1)])
            k = max(1, int(round(self.config.topk * var.numel())))
            out.append(var.topk(k).values[-1].clamp_min(1e-12))
        return torch.stack(out)

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
