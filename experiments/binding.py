"""Where three-object captions fail: what the judge reads in images generated from them, and
whether the text encoder binds each colour to its shape.

    python experiments/binding.py                          # the shipped model
    python experiments/binding.py --model runs/model-v6 --captions 150

Generation: held-out three-object captions (seeds from 10 300 000), diffusers' StableDiffusionPipeline
with DDIM, 50 steps, guidance 5 (as `retouch bench model`). Printed: the faithful share (the judge's
background and multiset of objects against the caption), how many images hold 2, 3 or 4 objects,
and per caption object that is not there, whether an object read that matches no caption object
has its shape (in another colour), its colour (on another shape), or neither (missing, or another
object in its stead).

Probe: a linear classifier (softmax regression) on the text encoder's final hidden state at each
shape token of 2000 training-range captions, predicting the colour said with that shape; its
accuracy on 500 held-out captions (1500 objects). Near 100 % means the text encoder binds colour to
shape and a binding error is the UNet's.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

import retouch
from retouch.bench.model import _pipeline, generate
from retouch.shapes import world
from retouch.shapes.judge import load_judge, read_images

SEED = 10_300_000


def failures(model, judge, n: int) -> Counter:
    """What the judge reads in images generated from n held-out three-object captions, counted."""
    scenes = [world.sample_scene(SEED + i, n_objects=3) for i in range(n)]
    images = generate(_pipeline(model), model, [world.caption(s) for s in scenes], 50, 5.0, SEED, 50)
    count = Counter()
    for scene, (background, objects) in zip(scenes, read_images(judge, images)):
        wanted = [(o.color, o.shape) for o in scene.objects]
        count += classify(wanted, scene.background, objects, background)
    return count


def classify(wanted: list, wanted_background: str, objects: tuple, background: str) -> Counter:
    """One image's reading ((colour, shape) objects, background) against its caption's, counted."""
    count = Counter({"faithful": Counter(objects) == Counter(wanted) and background == wanted_background})
    count[f"images with {len(objects)} objects"] += 1
    count["background wrong"] += background != wanted_background
    left = Counter(objects) - Counter(wanted)  # objects read that no caption object matches
    for color, shape in (Counter(wanted) - Counter(objects)).elements():  # caption objects not there
        if any(s == shape for _, s in left.elements()):
            count["object: its shape there in another colour"] += 1
        elif any(c == color for c, _ in left.elements()):
            count["object: its colour there on another shape"] += 1
        else:
            count["object: missing, or another object in its stead"] += 1
    return count


@torch.no_grad()
def _shape_states(model, seeds) -> tuple[np.ndarray, list[str]]:
    """The text encoder's final hidden state at each shape token [n_objects, D], and its colour."""
    tok, te = model.tokenizer, model.text_encoder
    states, colors = [], []
    for seed in seeds:
        scene = world.sample_scene(seed, n_objects=3)
        ids = tok(world.caption(scene), padding="max_length", truncation=True, return_tensors="pt").input_ids
        hidden = te(ids.to(model.device))[0][0].float().cpu()  # [77, D]
        tokens = [t.removesuffix("</w>") for t in tok.convert_ids_to_tokens(ids[0])]
        at = 0
        for obj in scene.objects:
            at = tokens.index(obj.shape, at)
            states.append(hidden[at].numpy())
            colors.append(obj.color)
            at += 1
    return np.stack(states), colors


def probe_accuracy(model, n_train: int = 2000, n_test: int = 500) -> tuple[float, float]:
    """Held-out accuracy of a linear probe for an object's colour at its shape token, and chance."""
    x_train, c_train = _shape_states(model, range(20_000_000, 20_000_000 + n_train))
    x_test, c_test = _shape_states(model, range(20_100_000, 20_100_000 + n_test))
    labels = sorted(set(c_train))
    y_train = torch.tensor([labels.index(c) for c in c_train])
    y_test = torch.tensor([labels.index(c) if c in labels else -1 for c in c_test])
    x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    w = torch.zeros(x_train.shape[1], len(labels), requires_grad=True)  # [D, colours]
    b = torch.zeros(len(labels), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(1500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy((x_train - mean) / std @ w + b, y_train).backward()
        opt.step()
    with torch.no_grad():
        predicted = ((x_test - mean) / std @ w + b).argmax(1)
    return float((predicted == y_test).float().mean()), 1 / len(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder [default: the shipped model]")
    ap.add_argument("--captions", type=int, default=150)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = retouch.load(args.model, device="cpu")
    count = failures(model, load_judge(), args.captions)
    print(f"{args.model or 'shipped model'}: {args.captions} three-object captions")
    print(f"  faithful: {count.pop('faithful', 0) / args.captions:.1%}")
    for key, value in sorted(count.items()):
        print(f"  {key}: {value}")
    accuracy, chance = probe_accuracy(model)
    print(f"  text encoder probe (colour at the shape token): {accuracy:.1%} (chance {chance:.1%})")


if __name__ == "__main__":
    main()
