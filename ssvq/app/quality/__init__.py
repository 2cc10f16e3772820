"""`ssvq quality`: accuracy (digits) or embedding fidelity (MiniLM) per bit of
weight storage, for fp32, uniform int8/int4/int3 (post-training and QAT), VQ
and SSVQ (post-training and trained with compress.train), a plain faiss
k-means anchor and, on digits, DiffQ.

Bits per weight are counted as the images stream them (compress.quantize.
layer_bits: codebook, codes, signs, padding to whole beats, 16 bits per row
scale); int4/int3 are real int4/int3 images; the faiss anchor with its float32
codebook; fp32 as 32. Accuracy / fidelity is measured with the exported
(dequantized) weights and float activations, the usual weight-compression
comparison; on digits the whole int8-activation chain through
ssvq.reference.outputs (the accelerator's arithmetic) is reported beside it.

Every row with images also carries the accelerator's columns (hwcols): the
metric with every compressed layer on the accelerator's integer path
(compress.intlinear) and the whole-model speedup over int8 and int4 from the
cost model.

Modules, one job each: command (the CLI handler), digits and minilm (the two
experiments and their reports), minilm_task and corpus (the MiniLM task and its
offline sentences), baselines (faiss, diffq-fixed), checks (stream and RTL
bit-exactness), hwcols (integer-path fidelity and speedups), pareto (the
report's decisions), plots, tables, runtime.
"""
