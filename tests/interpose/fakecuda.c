/* A stand-in for the CUDA driver (built as libcuda.so.1 and preloaded by the tests), which calls
 * every buffer device memory.
 *
 * Built plain, it answers only cuPointerGetAttribute: the GPU backend cannot load (no cuInit), so
 * the interposer must leave every message to the library (a real device buffer would crash host
 * packing), without calling anything else of the driver.
 *
 * Built with -DFAKE_DRIVER it also answers what the GPU loader and the interposer's staging need
 * (cuInit, one device, cuMemAlloc_v2/cuMemFree_v2 over malloc) and each pointer's allocation
 * range (2 MiB from the 1 MiB boundary below it, which the interposer caches): with the host emulation of the
 * kernels standing in for libhauler_cuda.so (emukernels.cpp), "device" memory is host memory and
 * the GPU packing path runs end to end. */
#include <stdlib.h>

int cuPointerGetAttribute(void *data, int attribute, unsigned long long ptr) {
  (void)ptr;
  if (attribute == 2) { *(unsigned int *)data = 2; return 0; } /* MEMORY_TYPE: DEVICE */
  if (attribute == 8) { *(unsigned int *)data = 0; return 0; } /* IS_MANAGED: no */
#ifdef FAKE_DRIVER
  /* RANGE_START_ADDR / RANGE_SIZE: every "allocation" is 2 MiB from the 1 MiB boundary below the
   * pointer, so a buffer of under 1 MiB lies in one allocation wherever malloc put it (a real
   * allocation never ends inside a buffer; a 1 MiB window did, and each such message queried again) */
  if (attribute == 11) { *(unsigned long long *)data = ptr & ~((1ull << 20) - 1); return 0; }
  if (attribute == 12) { *(size_t *)data = (size_t)2 << 20; return 0; }
#endif
  return 1; /* CUDA_ERROR_INVALID_VALUE: the plain stand-in knows no ranges */
}

#ifdef FAKE_DRIVER
int cuInit(unsigned int flags) { (void)flags; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDriverGetVersion(int *v) { *v = 12040; return 0; }
int cuMemAlloc_v2(unsigned long long *p, size_t n) {
  void *m = malloc(n);
  *p = (unsigned long long)m;
  return m ? 0 : 2; /* CUDA_ERROR_OUT_OF_MEMORY */
}
int cuMemFree_v2(unsigned long long p) {
  free((void *)p);
  return 0;
}
#endif
