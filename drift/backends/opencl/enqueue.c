/* The OpenCL backend's launch loop (drift/backends/opencl/__init__.py, CLRuntime.run): a
 * decode step's few hundred kernels enqueued in one call from Python, each through the ICD
 * loader's clEnqueueNDRangeKernel (passed in as `enqueue`: this library links nothing) with
 * no event, so a launch costs the host the driver's work alone. */
#include <stddef.h>
#include <stdint.h>

typedef int32_t (*enqueue_fn)(void *queue, void *kernel, uint32_t work_dim,
                              const size_t *offset, const size_t *global, const size_t *local,
                              uint32_t n_wait, const void *wait, void *event);

/* Launch i: kernels[i] over 2 dimensions, global sizes sizes[4i], sizes[4i + 1], local
 * sizes sizes[4i + 2], sizes[4i + 3]. Returns n, or the index of the first launch the
 * driver refused (its error in *err; the launches after it are not enqueued). */
int enqueue_all(void *enqueue, void *queue, int n, void *const *kernels, const size_t *sizes,
                int32_t *err) {
    enqueue_fn fn = (enqueue_fn)enqueue;
    for (int i = 0; i < n; i++) {
        int32_t e = fn(queue, kernels[i], 2, NULL, sizes + 4 * i, sizes + 4 * i + 2, 0, NULL,
                       NULL);
        if (e != 0) {
            *err = e;
            return i;
        }
    }
    *err = 0;
    return n;
}
