// The one way project headers include Eigen (Eigen/Core: matrices and arrays; .cpp files add the modules they
// need). It refuses files compiled by nvcc. nvcc builds host code without the C++ files' -march=native, and
// Eigen's heap alignment follows the instruction set (64-byte blocks with AVX-512, plain 16-byte malloc without):
// an Eigen matrix allocated on one side and freed on the other corrupts the heap. The first H200 run (2026-12-04)
// died with "double free or corruption (out)" that way, when gptq_quantize_cuda took an Eigen::MatrixXf in a .cu.
// GPU code takes raw pointers; the Eigen half of a GPU feature lives in a .cpp (quant/gptq_cuda.cpp).
#pragma once

#ifdef __CUDACC__
#error "Eigen in a file compiled by nvcc: its heap alignment differs from the C++ files' (see core/eigen_core.h)"
#endif

#include <Eigen/Core>
