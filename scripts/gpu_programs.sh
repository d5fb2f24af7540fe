# The CUDA benchmarks of a GPU check, sourced by scripts/gpu_check.sh (its bench phase's default list and build
# targets) and scripts/gpu_prepare.sh (the programs it prebuilds for it), so that a new benchmark is named once.
QWENQ_GPU_BENCH_PROGRAMS="bench_qgemm_cuda bench_attention_cuda bench_attention_decode_cuda bench_gptq_cuda \
bench_kl_rows_cuda bench_lora_cuda"
