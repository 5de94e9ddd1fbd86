/* A stand-in for the CUDA driver (built as libcuda.so.1 and preloaded by the test): it answers
 * only cuPointerGetAttribute, and calls every buffer device memory. The interposer must then
 * leave every message to the library (a real device buffer would crash host packing), without
 * calling anything else of the driver. */
int cuPointerGetAttribute(void *data, int attribute, unsigned long long ptr) {
  (void)ptr;
  if (attribute == 2) { *(unsigned int *)data = 2; return 0; } /* MEMORY_TYPE: DEVICE */
  if (attribute == 8) { *(unsigned int *)data = 0; return 0; } /* IS_MANAGED: no */
  return 1;
}
