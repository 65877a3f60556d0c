"""Host-side pieces of the grain input pipelines; avl_jax/input_pipeline.py assembles them into datasets.

`data_source` (TFDS sources, record parsing, ids, the class-index cache), `data_config` (the config the
transforms read), `image_ops` and `audio_ops` (per-example frame and waveform ops), `train_transforms`,
`global_order` (one train order on every host) and `eval_transforms`.
"""
