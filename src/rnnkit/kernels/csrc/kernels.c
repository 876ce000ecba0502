/* rnnkit's C kernels as ONE translation unit (one compile, one library; see
 * rnnkit/kernels/native.py): RNN, LSTM, GRU and LayerNormLSTM over whole sequences, the LSTM
 * stack's single step, minGRU/minLSTM's pass over time (float32), the LSTM in bfloat16
 * (bf16.c); rows contiguous, gate blocks in torch.nn's order (LSTM i, f, g, o; GRU r, z, n). */
#define _DEFAULT_SOURCE  /* syscall() under -std=c99 (bf16.c asks Linux for AMX tiles) */
#include "common.h"
#include "panel.h"

/* How many threads a parallel loop here uses (torch.set_num_threads sets it), 1 without
 * OpenMP. */
int rnnkit_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}


#include "lstm.c"
#include "gru.c"
#include "rnn.c"
#include "layernorm_lstm.c"
#include "minrnn.c"
#include "bf16.c"  /* after lstm.c: its bfloat16 kernels reuse the LSTM cell rows */
