"""Where the query's words attend: the share of each token's cross-attention inside DiffEdit's mask.

    python experiments/attention_probe.py 10000380 10000130 10000020 10000440     # ShapesBench recolour seeds

For each held-out recolour: DiffEdit's mask (the `recolor` preset's), the image DDIM-encoded to pure
noise, and one UNet call with the query at a quarter and at half of the encoding's levels, every
cross-attention layer recording its attention probabilities. Printed per token: the share of its
attention (summed over layers, heads and pixels, each pixel weighed by the mask's cover at the
layer's resolution) that lies inside the mask, beside the mask's area. A word that belongs to the
edited object would show a share well above the area; on the shipped model none does
(docs/experiments.md), so word weights cannot be told apart by where they attend.
"""

from __future__ import annotations

import argparse

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import retouch
from retouch.attention import attention_processor, pooled_mask
from retouch.bench.cases import make_case
from retouch.denoiser import EvalCounter, unet_eps
from retouch.schedule import Schedule
from retouch.text import encode_text


class Recording(AttnProcessor2_0):
    """Attention as usual; cross-attention's probabilities summed per token, inside the mask and in all."""

    def __init__(self, mask: torch.Tensor):  # mask [h, w] at the latent's resolution
        super().__init__()
        self.mask, self.inside, self.total = mask, 0.0, 0.0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if encoder_hidden_states is not None:
            q = attn.head_to_batch_dim(attn.to_q(hidden_states))
            k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            p = attn.get_attention_scores(q, k, None)  # [B·heads, pixels, L]
            m = pooled_mask(self.mask[None, None], p.shape[1])[0]  # [pixels]
            self.inside = self.inside + (p * m[None, :, None]).sum((0, 1))
            self.total = self.total + p.sum((0, 1))
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("seeds", type=int, nargs="+", help="ShapesBench recolour case seeds")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = retouch.load()
    schedule = Schedule.from_scheduler(model.scheduler)
    for seed in args.seeds:
        case = make_case(seed, "recolor")
        query, reference = case.target_caption, case.source_caption
        mask = retouch.diffedit_mask(
            model,
            case.input_image,
            query,
            reference,
            preset="recolor",
            num_inference_steps=args.steps,
            seed=seed,
        ).latent
        enc = retouch.ddim_encoding(model, case.input_image, num_inference_steps=args.steps, encode_ratio=1.0)
        tokens = model.tokenizer(query).input_ids
        for level in (len(enc.latents) // 4, len(enc.latents) // 2):
            with attention_processor(model.unet, Recording(mask)) as rec:
                unet_eps(model, schedule, EvalCounter())(
                    enc.latents[level], enc.timesteps[level], encode_text(model, [query])
                )
            share = (rec.inside / rec.total)[: len(tokens)]
            words = " ".join(
                f"{model.tokenizer.decode([t]).strip()}:{float(s):.2f}" for t, s in zip(tokens, share)
            )
            print(f"{seed} mask area {float(mask.float().mean()):.3f} t={enc.timesteps[level]}: {words}")


if __name__ == "__main__":
    main()
