// Compiled by the image's own nvcc; run on a GPU it must print "kernel ok".
#include <cstdio>

__global__ void square(int *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * x[i];
}

int main() {
    const int n = 1024;
    int host[n], *dev;
    for (int i = 0; i < n; i++) host[i] = i;
    if (cudaMalloc(&dev, sizeof host) != cudaSuccess) { std::printf("cudaMalloc failed\n"); return 1; }
    cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice);
    square<<<(n + 255) / 256, 256>>>(dev, n);
    cudaError_t err = cudaMemcpy(host, dev, sizeof host, cudaMemcpyDeviceToHost);
    cudaFree(dev);
    for (int i = 0; i < n; i++)
        if (host[i] != i * i) { std::printf("wrong result at %d: %d (%s)\n", i, host[i], cudaGetErrorString(err)); return 1; }
    std::printf("kernel ok: %d squares\n", n);
    return 0;
}
