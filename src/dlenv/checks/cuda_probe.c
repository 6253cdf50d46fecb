/* dlenv's CUDA probe: asks the image's own CUDA libraries (loaded with dlopen, so it needs no
 * CUDA headers or toolkit to build) what they see, and runs a small GEMM with cuBLAS.
 *
 *   cuda_probe devices   -> prints "devices N driver D runtime R"; exit 0 if N > 0 and the driver is at
 *                           least what NVIDIA_REQUIRE_CUDA ("cuda>=13.0") asks for
 *   cuda_probe gemm      -> C = A x B (64x64, cuBLAS SGEMM) on GPU 0, checked on the CPU
 *
 * Built on the host by dlenv (cc -O2 -o cuda_probe cuda_probe.c -ldl; aarch64-linux-gnu-gcc for arm64
 * bundles) and run in the image.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*count_fn)(int *);
typedef int (*version_fn)(int *);
typedef int (*malloc_fn)(void **, size_t);
typedef int (*free_fn)(void *);
typedef int (*memcpy_fn)(void *, const void *, size_t, int);
typedef int (*create_fn)(void **);
typedef int (*destroy_fn)(void *);
typedef int (*sgemm_fn)(void *, int, int, int, int, int, const float *, const float *, int, const float *, int,
                        const float *, float *, int);

static void *open_first(const char *const *names) {
    for (; *names; names++) {
        void *h = dlopen(*names, RTLD_NOW | RTLD_GLOBAL);
        if (h) return h;
    }
    return NULL;
}

static void *sym(void *lib, const char *name) {
    void *f = dlsym(lib, name);
    if (!f) { fprintf(stderr, "missing symbol %s\n", name); exit(3); }
    return f;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "devices";
    const char *const cudart_names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so", NULL};
    void *cudart = open_first(cudart_names);
    if (!cudart) { fprintf(stderr, "libcudart not found: %s\n", dlerror()); return 2; }
    int n = -1, driver = 0, runtime = 0;
    int err = ((count_fn)sym(cudart, "cudaGetDeviceCount"))(&n);
    ((version_fn)sym(cudart, "cudaDriverGetVersion"))(&driver);
    ((version_fn)sym(cudart, "cudaRuntimeGetVersion"))(&runtime);
    printf("devices %d driver %d runtime %d error %d\n", err ? 0 : n, driver, runtime, err);
    if (err || n < 1) return 1;
    int major = 0, minor = 0;
    const char *require = getenv("NVIDIA_REQUIRE_CUDA");
    if (require && sscanf(require, "cuda>=%d.%d", &major, &minor) >= 1 && driver < major * 1000 + minor * 10) {
        printf("driver %d is older than NVIDIA_REQUIRE_CUDA %s\n", driver, require);
        return 1;
    }
    if (strcmp(mode, "devices") == 0) return 0;

    const char *const cublas_names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so", NULL};
    void *cublas = open_first(cublas_names);
    if (!cublas) { fprintf(stderr, "libcublas not found: %s\n", dlerror()); return 2; }
    enum { N = 64 };
    static float a[N * N], b[N * N], c[N * N], want[N * N];
    for (int i = 0; i < N * N; i++) { a[i] = (float)(i % 7) - 3.0f; b[i] = (float)(i % 5) * 0.5f; }
    for (int i = 0; i < N; i++)          /* column-major, as cuBLAS */
        for (int j = 0; j < N; j++) {
            float s = 0;
            for (int k = 0; k < N; k++) s += a[i + k * N] * b[k + j * N];
            want[i + j * N] = s;
        }
    malloc_fn cmalloc = (malloc_fn)sym(cudart, "cudaMalloc");
    memcpy_fn cmemcpy = (memcpy_fn)sym(cudart, "cudaMemcpy");
    free_fn cfree = (free_fn)sym(cudart, "cudaFree");
    void *da, *db, *dc, *handle;
    size_t bytes = sizeof(float) * N * N;
    if (cmalloc(&da, bytes) || cmalloc(&db, bytes) || cmalloc(&dc, bytes)) { fprintf(stderr, "cudaMalloc failed\n"); return 1; }
    cmemcpy(da, a, bytes, 1);
    cmemcpy(db, b, bytes, 1);
    if (((create_fn)sym(cublas, "cublasCreate_v2"))(&handle)) { fprintf(stderr, "cublasCreate failed\n"); return 1; }
    const float one = 1.0f, zero = 0.0f;
    int status = ((sgemm_fn)sym(cublas, "cublasSgemm_v2"))(handle, 0, 0, N, N, N, &one, da, N, db, N, &zero, dc, N);
    cmemcpy(c, dc, bytes, 2);
    ((destroy_fn)sym(cublas, "cublasDestroy_v2"))(handle);
    cfree(da); cfree(db); cfree(dc);
    double worst = 0;
    for (int i = 0; i < N * N; i++) worst = fmax(worst, fabs(c[i] - want[i]));
    printf("gemm %dx%d status %d max error %g\n", N, N, status, worst);
    return status == 0 && worst < 1e-3 ? 0 : 1;
}
