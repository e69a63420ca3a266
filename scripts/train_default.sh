#!/usr/bin/env bash
# The recipe of the embedded default model (assets/default/): one command, CPU only.
#
#   shapes data set -> caption tokenizer -> mT5 encoder frozen at a seeded init -> small WFVAE
#   -> its latent shift/scale measured on the clips -> text-embedding cache -> small OpenSoraT2V v1.3 DiT on the VAE latents -> flat e2e folder
#   -> osp-export pipeline -> assets/default/
#
# Every step is skipped when its output exists (delete $WORK/<step> to redo one); training steps
# resume from their latest checkpoint. Logs go to $WORK/logs/. Sizes and step counts can be
# overridden through the environment (VAE_STEPS, DIT_STEPS, ...). Prints the total run time.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-$repo/.osp/train_default}"
OUT="${OUT:-$repo/assets/default}"
SEED="${SEED:-0}"
FRAMES="${FRAMES:-9}"
SIZE="${SIZE:-32}"
CLIPS="${CLIPS:-960}"
VOCAB="${VOCAB:-64}"
MAX_LEN="${MAX_LEN:-16}"
VAE_STEPS="${VAE_STEPS:-1200}"
VAE_BATCH="${VAE_BATCH:-4}"
DIT_STEPS="${DIT_STEPS:-12000}"
DIT_BATCH="${DIT_BATCH:-16}"
SAMPLING_STEPS="${SAMPLING_STEPS:-20}"
GUIDANCE="${GUIDANCE:-4.0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

start=$(date +%s)
mkdir -p "$WORK/logs"
log() { printf '[train_default %4ds] %s\n' "$(($(date +%s) - start))" "$*" >&2; }
step() { # step NAME DONE_PATH COMMAND...: runs COMMAND unless DONE_PATH exists, logging (info) to logs/NAME.log
  local name="$1" done_path="$2"
  shift 2
  if [ -e "$done_path" ]; then
    log "$name: done already ($done_path)"
    return
  fi
  log "$name ..."
  local t0=$(date +%s)
  RUST_LOG="${RUST_LOG:-info}" "$@" >"$WORK/logs/$name.log" 2>&1 || { log "$name FAILED, see $WORK/logs/$name.log"; tail -20 "$WORK/logs/$name.log" >&2; exit 1; }
  log "$name: $(($(date +%s) - t0)) s"
}

log "building osp-train and osp-export (release)"
(cd "$repo" && cargo build --release -q -p osp-trainer --bin osp-train -p osp-export --bin osp-export)
TRAIN="$CARGO_TARGET_DIR/release/osp-train"
EXPORT="$CARGO_TARGET_DIR/release/osp-export"

# 1. Data: coloured shapes moving in named directions, upstream annotation layout.
step shapes "$WORK/shapes/data.txt" \
  "$TRAIN" shapes --out "$WORK/shapes" --count "$CLIPS" --num-frames "$FRAMES" --height "$SIZE" --width "$SIZE" --seed "$SEED"

# 2. Caption tokenizer (T5 conventions).
mkdir -p "$WORK/flat"
step tokenizer "$WORK/flat/tokenizer.json" \
  "$TRAIN" tokenizer --captions "$WORK/shapes/annotation.json" --vocab-size "$VOCAB" --out "$WORK/flat/tokenizer.json"

# 3. Text encoder: an mT5-architecture encoder frozen at a seeded init, vocabulary = the tokenizer's.
cat >"$WORK/text_encoder_config.json" <<EOF
{"vocab_size": $VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
 "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-06,
 "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": true,
 "tie_word_embeddings": false, "pad_token_id": 0, "eos_token_id": 1}
EOF
step text_encoder "$WORK/flat/text_encoder.safetensors" \
  "$TRAIN" init --model mt5 --config "$WORK/text_encoder_config.json" --seed "$SEED" --out "$WORK/flat/text_encoder.safetensors"

# 4. WFVAE: 8 latent channels, 4x temporal and 8x8 spatial compression; L1 + KL + wavelet loss.
cat >"$WORK/vae_config.json" <<'EOF'
{"latent_dim": 8, "base_channels": 8, "encoder_num_resblocks": 2, "encoder_energy_flow_hidden_size": 8,
 "decoder_num_resblocks": 2, "decoder_energy_flow_hidden_size": 8, "attention_type": "AttnBlock3DFix",
 "use_attention": false, "dropout": 0.0, "norm_type": "layernorm", "t_interpolation": "trilinear",
 "connect_res_layer_num": 2, "scale": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
 "shift": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
 "l1_dowmsample_block": "Downsample", "l1_downsample_wavelet": "HaarWaveletTransform2D",
 "l2_dowmsample_block": "Spatial2xTime2x3DDownsample", "l2_downsample_wavelet": "HaarWaveletTransform3D",
 "l1_upsample_block": "Upsample", "l1_upsample_wavelet": "InverseHaarWaveletTransform2D",
 "l2_upsample_block": "Spatial2xTime2x3DUpsample", "l2_upsample_wavelet": "InverseHaarWaveletTransform3D"}
EOF
step vae "$WORK/vae/checkpoint-$VAE_STEPS/training_state.json" \
  "$TRAIN" vae --model_config "$WORK/vae_config.json" --video_path "$WORK/shapes/videos" --ckpt_dir "$WORK/vae" \
  --resolution "$SIZE" --num_frames "$FRAMES" --batch_size "$VAE_BATCH" --lr 1e-3 --max_steps "$VAE_STEPS" \
  --perceptual_weight 0 --disc_start 1000000000 --kl_weight 1e-6 --wavelet_loss --wavelet_weight 0.1 \
  --ema --ema_decay 0.99 --save_ckpt_step 100 --checkpoints_total_limit 2 --resume_from_checkpoint latest \
  --seed "$SEED" --progress jsonl

# 4b. The latents' per-channel shift and scale (the DiT trains on unit-variance latents).
step latent_stats "$WORK/vae_final/latent_stats.json" \
  "$TRAIN" latent-stats --ae_path "$WORK/vae/checkpoint-$VAE_STEPS/model_ema" --video_path "$WORK/shapes/videos" \
  --resolution "$SIZE" --num_frames "$FRAMES" --max_clips 512 --out "$WORK/vae_final"
VAE_DIR="$WORK/vae_final"

# 5. Text-embedding cache of every caption (+ null.npz for CFG dropout).
step embed "$WORK/embeds/null.npz" \
  "$TRAIN" embed --config "$WORK/text_encoder_config.json" --weights "$WORK/flat/text_encoder.safetensors" \
  --tokenizer "$WORK/flat/tokenizer.json" --annotation "$WORK/shapes/annotation.json" --out "$WORK/embeds" \
  --model_max_length "$MAX_LEN" --batch_size 64

# 6. DiT (OpenSoraT2V v1.3 architecture, 4 layers, hidden 96) on the normalised VAE latents.
cat >"$WORK/transformer_config.json" <<'EOF'
{"num_attention_heads": 4, "attention_head_dim": 24, "in_channels": 8, "out_channels": 8, "num_layers": 4,
 "dropout": 0.0, "cross_attention_dim": 96, "attention_bias": true, "sample_size_h": [4, 4],
 "sample_size_w": [4, 4], "sample_size_t": 3, "patch_size": 2, "patch_size_t": 1,
 "activation_fn": "gelu-approximate", "only_cross_attention": false, "double_self_attention": false,
 "upcast_attention": false, "norm_elementwise_affine": false, "norm_eps": 1e-06, "caption_channels": 32,
 "interpolation_scale_h": 1.0, "interpolation_scale_w": 1.0, "interpolation_scale_t": 1.0,
 "sparse1d": false, "sparse_n": 4}
EOF
echo "$WORK/shapes,$WORK/embeds,$WORK/shapes/annotation.json" >"$WORK/dit_data.txt"
step dit "$WORK/dit/checkpoint-$DIT_STEPS/training_state.json" \
  "$TRAIN" dit --model_config "$WORK/transformer_config.json" --ae_path "$VAE_DIR" --data "$WORK/dit_data.txt" \
  --output_dir "$WORK/dit" --num_frames "$FRAMES" --train_fps 0 --sample_rate 1 --force_resolution \
  --max_height "$SIZE" --max_width "$SIZE" --hw_stride "$SIZE" --train_batch_size "$DIT_BATCH" \
  --max_train_steps "$DIT_STEPS" --learning_rate 1e-3 --lr_scheduler constant_with_warmup --lr_warmup_steps 100 \
  --adam_weight_decay 0 --snr_gamma 5.0 --cfg 0.1 --null_text_embed "$WORK/embeds/null.npz" \
  --use_ema --ema_decay 0.995 --cache_latents --checkpointing_steps 1000 --checkpoints_total_limit 2 \
  --resume_from_checkpoint latest --seed "$SEED" --progress jsonl

# 7. The flat e2e layout, then the pipeline bundle.
cp "$WORK/text_encoder_config.json" "$WORK/flat/text_encoder_config.json"
cp "$VAE_DIR/config.json" "$WORK/flat/vae_config.json"
cp "$VAE_DIR/diffusion_pytorch_model.safetensors" "$WORK/flat/vae.safetensors"
cp "$WORK/transformer_config.json" "$WORK/flat/transformer_config.json"
cp "$WORK/dit/checkpoint-$DIT_STEPS/model_ema/diffusion_pytorch_model.safetensors" "$WORK/flat/transformer.safetensors"
cat >"$WORK/flat/scheduler_config.json" <<'EOF'
{"_class_name": "EulerAncestralDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
 "beta_end": 0.02, "beta_schedule": "linear", "trained_betas": null, "prediction_type": "v_prediction",
 "timestep_spacing": "trailing", "steps_offset": 0, "rescale_betas_zero_snr": true}
EOF
rm -rf "$WORK/bundle"
step export "$WORK/bundle/pipeline.json" \
  "$EXPORT" pipeline --from-dir "$WORK/flat" --out "$WORK/bundle" \
  --default-num-frames "$FRAMES" --default-height "$SIZE" --default-width "$SIZE" \
  --default-num-sampling-steps "$SAMPLING_STEPS" --default-max-sequence-length "$MAX_LEN" --spatial-multiple "$SIZE"
# The captions are the whole prompt language: no upstream prompt template or negative prompt.
python3 - "$WORK/bundle/pipeline.json" "$GUIDANCE" <<'EOF'
import json, os, sys
path, guidance = sys.argv[1], float(sys.argv[2])
p = json.load(open(path))
p["defaults"].update(positive_prompt_template="{}", negative_prompt="", guidance_scale=guidance)
tmp = path + ".tmp"
json.dump(p, open(tmp, "w"), indent=2)
os.replace(tmp, path)
EOF

rm -rf "$OUT.tmp" && cp -r "$WORK/bundle" "$OUT.tmp" && rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
log "bundle: $OUT ($(du -sh "$OUT" | cut -f1))"
log "total run time: $(($(date +%s) - start)) s"
