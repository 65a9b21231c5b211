"""Each method's presets: named settings for an edit's aim, each measured against the paper's
defaults on ShapesBench (BENCHMARKS.md). The defaults stay the papers'; explicit settings override a
preset. Nothing here imports torch, so every shell can list them at start-up."""

from __future__ import annotations

from collections.abc import Sequence

DIFFEDIT = {
    # a mask closer to what changes: recolour mask IoU 0.559 against 0.448, success level (model version 5)
    "tight-mask": dict(mask_threshold=0.8),
    # encode to pure noise, so the removed object's blur is not drawn again (removals 71 against 50 %,
    # model version 5); steer decoding away from the reference, so no other object of the scene is drawn
    # in its place (model version 11, 100 fresh removals: 84 against 74 %, others kept 77 against 74 %);
    # inside the mask, half the attention to the words the scene keeps (version 11, 200 fresh
    # removals: 88 against 84 %, the other objects intact in 80 against 81 %); the mask fitted to
    # the image's edges, less its regions of under 0.8 of the strongest one's summed score (the
    # loose mask held another object in 56 % of removals, redrawn with it: version 11, 200 fresh
    # removals: 181 against 179 succeed, 176 against 160 with every other object intact)
    "remove": dict(
        encode_ratio=1.0,
        reference_guidance_scale=5.0,
        shared_word_scale=0.5,
        mask_refine_radius=3.0,
        mask_keep_ratio=0.8,
    ),
    # the new colour drawn from pure noise inside a tighter mask (model version 10: 100 fresh recolours,
    # 78 against 71 % at mask IoU 0.521 against 0.427), attending inside it three times more to the
    # new words and half as much to the rest of the scene (version 11, 200 fresh recolours: 85
    # against 79 %, a copy of another object drawn there in 7 against 13 %); the paper's threshold on
    # scores fitted to the image's edges instead of the tighter threshold (version 11, 200 fresh
    # recolours: 83.5 against 79 %, mask IoU 0.66 against 0.56), less the regions of under 0.8 of
    # the strongest one's summed score, mostly another object the words touch (86.5 against 83.5 %)
    "recolor": dict(
        mask_refine_radius=3.0,
        mask_keep_ratio=0.8,
        encode_ratio=1.0,
        changed_word_scale=3.0,
        shared_word_scale=0.5,
    ),
    # a change over most of the image (a new background): the paper's mask cannot hold it (0 % of
    # background edits), so no mask (the paper's own ablation: encode to r, decode under the query)
    # from a little deeper (model version 11, 100 fresh background edits: 81 against 0 % at the paper's
    # settings and 67 % at r = 0.8; the whole image is redrawn, so the objects are intact in 63 %)
    "background": dict(mode="no_mask", encode_ratio=0.9),
    # a new object: drawn from pure noise, steered away from the reference (model version 11, 150 fresh
    # additions judged wherever the object was drawn, the rest kept: 31 against 15 % at the
    # paper's settings; 28 % at r = 1.0 alone)
    "add": dict(encode_ratio=1.0, reference_guidance_scale=3.0),
}

# The LEDITS authors' demo's concept settings (docs/ledits.md, defaults), and ours
LEDITS = {
    "style": dict(edit_scale=8.0, edit_warmup=2, edit_threshold=0.92),
    "face": dict(edit_scale=5.0, edit_warmup=2, edit_threshold=0.95),
    "object": dict(edit_scale=15.0, edit_warmup=5, edit_threshold=0.95),
    # ours, a change over most of the image: each concept guides the 70 % of the latent where it
    # pulls hardest (the paper's λ = 0.95 keeps 5 %: a background concept can never cover the
    # background), and harder (model version 11, 100 fresh background edits: 58 against 0 % at the
    # paper's settings; the objects intact in 55 % of them: they are guided too)
    "background": dict(edit_scale=20.0, edit_threshold=0.3),
    # LEDITS++ (Brack et al., CVPR 2024) as its authors publish it: DPM-Solver++ 2M SDE inversion
    # with N = 50 edited steps below a skip of a tenth of the schedule (55 steps, the top 5 not
    # edited: the first edited timestep is 901 of 1000), no target prompt, no momentum, each
    # concept inside its implicit mask (cross-attention ∩ noise estimate) at λ = 0.75, s = 10,
    # no warm-up (the authors' README example; diffusers' default warm-up)
    "ledits++": dict(
        num_inference_steps=55,
        skip=5,
        solver="dpmsolver++",
        implicit_mask="intersect",
        edit_scale=10.0,
        edit_threshold=0.75,
        edit_warmup=0,
        momentum_scale=0.0,
    ),
}

# FlowEdit's, by model family (a preset's step counts are its family's: SD3 edits the last n_max of
# T = 50 steps). Ours, chosen on 100 fresh ShapesWorld edits (scene seeds from 10 100 000) on
# shapes-sd3 version 3 and measured on the 500 held-out ones (BENCHMARKS.md, flow models).
FLOWEDIT_BY_FAMILY = {
    "sd3": {
        # edit from further up the schedule with half the target guidance: on those 100, 54 against
        # 34 % at the published settings, the background 23.2 against 22.5 dB; ahead on every kind.
        # With `background` for new backgrounds, on the 500 (version 4): 66 against 43 %, 132 edits
        # won and 20 lost, 0.54 dB more background on the object kinds
        "stronger": dict(n_max=40, target_guidance_scale=7.0),
        # a new background: further still, n_max = 45 of 50 (background edits on those 100: 20 of 20
        # against 6 of 20 published, 16 of 20 at n_max = 40)
        "background": dict(n_max=45, target_guidance_scale=7.0),
    },
}
FLOWEDIT = FLOWEDIT_BY_FAMILY["sd3"]  # those the help texts list

BY_METHOD = {"diffedit": DIFFEDIT, "ledits": LEDITS, "flowedit": FLOWEDIT}

# Settings that weigh a UNet's cross-attention, which a flow model (SD3, FLUX: joint attention) has
# not: on a flow model a preset leaves them out and keeps the rest (BENCHMARKS.md, flow models).
UNET_ONLY = ("changed_word_scale", "shared_word_scale")
FLOW_FAMILIES = ("sd3", "flux")  # the flow models' families (retouch.flows)


def on_model(method: str, family: str) -> dict:
    """A method's presets as they apply to a model of `family` ("sd", "sdxl", "sd3", "flux"): all
    of each on a UNet model, less the UNet-only settings on a flow model; FlowEdit's, its family's
    (none on a family they were not measured on)."""
    if method == "flowedit":
        return FLOWEDIT_BY_FAMILY.get(family, {})
    table = BY_METHOD[method]
    if family not in FLOW_FAMILIES:
        return table
    return {name: {k: v for k, v in s.items() if k not in UNET_ONLY} for name, s in table.items()}


# What each preset is for, in a few words (the app's preset menus)
AIMS = {
    "diffedit": {
        "tight-mask": "a closer mask",
        "remove": "taking an object out",
        "recolor": "a new colour",
        "background": "a new background (no mask)",
        "add": "a new object",
    },
    "ledits": {
        "style": "a style",
        "face": "a face",
        "object": "an object's colour, shape or removal",
        "background": "a new background",
        "ledits++": "LEDITS++: implicit masks on the exact DPM-Solver++ inversion",
    },
    "flowedit": {
        "stronger": "a new colour, shape, object or removal",
        "background": "a new background",
    },
}


def aims(method: str, names: Sequence[str] | None = None) -> str:
    """'name: what it is for; ...' of a method's presets (those named, or all)."""
    return "; ".join(f"{name}: {AIMS[method][name]}" for name in names or BY_METHOD[method])


MASK_FIELDS = ("num_inference_steps", "feather")  # with every mask_* field: what DiffEdit's mask reads


def reads_mask(field: str) -> bool:
    """Whether DiffEdit's mask depends on this setting (the mask command's options, a mask's cache)."""
    return field in MASK_FIELDS or field.startswith("mask_")


def mask_presets() -> list[str]:
    """DiffEdit's presets that set only what the mask reads (what the mask command takes)."""
    return [name for name, s in DIFFEDIT.items() if all(reads_mask(k) for k in s)]


def described(method: str, names: Sequence[str] | None = None) -> str:
    """'name (setting=value, ...), ...' of a method's presets (those named, or all), for help texts."""
    return ", ".join(
        f"{name} ({', '.join(f'{k}={_value(v)}' for k, v in BY_METHOD[method][name].items())})"
        for name in names or BY_METHOD[method]
    )


def _value(v) -> str:
    return v if isinstance(v, str) else f"{v:g}"
