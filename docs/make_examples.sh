#!/usr/bin/env bash
# Re-make the README's examples with the shipped model: `bash docs/make_examples.sh` (after setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
r=.venv/bin/retouch
out=docs/examples
mkdir -p "$out"

# DiffEdit: recolour, its inferred mask, and the result
$r mask examples/red_circle.png -o $out/diffedit_mask.png \
  --query "a green circle on a white background" --reference "a red circle on a white background"
$r edit diffedit examples/red_circle.png -o $out/diffedit_green.png \
  --query "a green circle on a white background" --reference "a red circle on a white background"
$r edit diffedit examples/two_shapes.png -o $out/diffedit_two.png \
  --query "a blue square and a red triangle on a gray background" \
  --reference "a blue square and a yellow triangle on a gray background"
$r mask examples/two_shapes.png -o $out/diffedit_two_mask.png \
  --query "a blue square and a red triangle on a gray background" \
  --reference "a blue square and a yellow triangle on a gray background"

# DiffEdit: taking an object out, at the paper's settings, at r = 1.0 alone, and under --preset remove
for v in "paper:" "r1:--encode-ratio 1.0" "preset:--preset remove"; do
  # shellcheck disable=SC2086 # the flags split into words
  $r edit diffedit examples/red_circle.png -o "$out/diffedit_remove_${v%%:*}.png" ${v#*:} \
    --query "a white background" --reference "a red circle on a white background"
done

# DiffEdit's recolor preset without and with the word weights inside the mask (two held-out
# ShapesBench cases, recolor-10000130 and recolor-10000020, at their seeds), the mask as the preset
# had it when the weights came (threshold 0.8, not fitted): without, another object of the scene is
# drawn where the recoloured one was. Then the preset as it is (the mask fitted to the image)
recolor_pair() { # input name, seed, query, reference
  for v in "unweighed:--changed-word-scale 1 --shared-word-scale 1" "weighed:"; do
    # shellcheck disable=SC2086 # the flags split into words
    $r edit diffedit "examples/$1.png" -o "$out/diffedit_recolor_$1_${v%%:*}.png" --preset recolor \
      --mask-refine-radius 0 --mask-threshold 0.8 ${v#*:} --seed "$2" --query "$3" --reference "$4"
  done
  $r edit diffedit "examples/$1.png" -o "$out/diffedit_recolor_$1_preset.png" --preset recolor \
    --seed "$2" --query "$3" --reference "$4"
}
recolor_pair purple_square 10000130 \
  "a green square, a purple triangle and a yellow square on a white background" \
  "a green square, a purple triangle and a purple square on a white background"
recolor_pair blue_triangle 10000020 \
  "a yellow triangle, a red circle and an orange triangle on a black background" \
  "a yellow triangle, a red circle and a blue triangle on a black background"

# DiffEdit's mask of the same two recolours: the paper's, tight-mask's, fitted to the image's
# edges (mask_refine_radius), and then kept to its strongest regions (mask_keep_ratio: the recolor
# preset's mask)
for v in "paper:" "tight:--preset tight-mask" "fitted:--mask-refine-radius 3" \
  "kept:--mask-refine-radius 3 --mask-keep-ratio 0.8"; do
  # shellcheck disable=SC2086 # the flags split into words
  $r mask examples/purple_square.png -o "$out/mask_purple_square_${v%%:*}.png" ${v#*:} --seed 10000130 \
    --query "a green square, a purple triangle and a yellow square on a white background" \
    --reference "a green square, a purple triangle and a purple square on a white background"
  # shellcheck disable=SC2086
  $r mask examples/blue_triangle.png -o "$out/mask_blue_triangle_${v%%:*}.png" ${v#*:} --seed 10000020 \
    --query "a yellow triangle, a red circle and an orange triangle on a black background" \
    --reference "a yellow triangle, a red circle and a blue triangle on a black background"
done

# A new background: DiffEdit at the paper's settings, then each method under its background preset
bg_r="a blue square and a yellow triangle on a gray background"
$r edit diffedit examples/two_shapes.png -o $out/background_diffedit_paper_black.png \
  --query "${bg_r/gray/black}" --reference "$bg_r"
$r invert examples/two_shapes.png -o $out/two_shapes_bg.inversion.safetensors --source "$bg_r"
for bg in black white; do
  $r edit diffedit examples/two_shapes.png -o "$out/background_diffedit_preset_$bg.png" \
    --preset background --query "${bg_r/gray/$bg}" --reference "$bg_r"
  $r edit ledits examples/two_shapes.png -o "$out/background_ledits_preset_$bg.png" \
    --preset background --inversion $out/two_shapes_bg.inversion.safetensors \
    --add "$bg background" --remove "gray background"
done
rm $out/two_shapes_bg.inversion.safetensors

# LEDITS: one inversion, two edits from it (SEGA concepts under the object preset; a target prompt)
$r invert examples/red_circle.png -o $out/red_circle.inversion.safetensors \
  --source "a red circle on a white background"
$r edit ledits examples/red_circle.png -o $out/ledits_concepts.png \
  --inversion $out/red_circle.inversion.safetensors --add "green circle" --remove "red circle" --preset object
$r edit ledits examples/red_circle.png -o $out/ledits_prompt.png \
  --inversion $out/red_circle.inversion.safetensors --prompt "a green circle on a white background"
rm $out/red_circle.inversion.safetensors

py=.venv/bin/python
$py docs/strip.py $out/diffedit.png "input=examples/red_circle.png" "mask=$out/diffedit_mask.png" \
  "green circle=$out/diffedit_green.png" "input=examples/two_shapes.png" \
  "mask=$out/diffedit_two_mask.png" "red triangle=$out/diffedit_two.png"
$py docs/strip.py $out/diffedit_remove.png "input=examples/red_circle.png" \
  "paper, r 0.8=$out/diffedit_remove_paper.png" "r 1.0 alone=$out/diffedit_remove_r1.png" \
  "preset remove=$out/diffedit_remove_preset.png"
$py docs/strip.py $out/diffedit_words.png "input=examples/purple_square.png" \
  "words as given=$out/diffedit_recolor_purple_square_unweighed.png" \
  "words weighed=$out/diffedit_recolor_purple_square_weighed.png" "input=examples/blue_triangle.png" \
  "words as given=$out/diffedit_recolor_blue_triangle_unweighed.png" \
  "words weighed=$out/diffedit_recolor_blue_triangle_weighed.png"
$py docs/strip.py $out/fitted_masks.png "input=examples/purple_square.png" \
  "paper=$out/mask_purple_square_paper.overlay.png" "tight-mask=$out/mask_purple_square_tight.overlay.png" \
  "fitted=$out/mask_purple_square_fitted.overlay.png" "strongest=$out/mask_purple_square_kept.overlay.png" \
  "recolor=$out/diffedit_recolor_purple_square_preset.png" "input=examples/blue_triangle.png" \
  "paper=$out/mask_blue_triangle_paper.overlay.png" "tight-mask=$out/mask_blue_triangle_tight.overlay.png" \
  "fitted=$out/mask_blue_triangle_fitted.overlay.png" "strongest=$out/mask_blue_triangle_kept.overlay.png" \
  "recolor=$out/diffedit_recolor_blue_triangle_preset.png"
$py docs/strip.py $out/ledits.png "input=examples/red_circle.png" \
  "+green -red circle=$out/ledits_concepts.png" "prompt: green=$out/ledits_prompt.png"
$py docs/strip.py $out/backgrounds.png "input=examples/two_shapes.png" \
  "DiffEdit paper: black=$out/background_diffedit_paper_black.png" \
  "DiffEdit preset: black=$out/background_diffedit_preset_black.png" \
  "DiffEdit preset: white=$out/background_diffedit_preset_white.png" \
  "LEDITS preset: black=$out/background_ledits_preset_black.png" \
  "LEDITS preset: white=$out/background_ledits_preset_white.png"
