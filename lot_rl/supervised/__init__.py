"""LoT for supervised learning: ``lot-rl cv`` (PreResNet image classification) and ``lot-rl lm`` (LSTM /
Transformer language modeling), on the same regularizer as the RL agent (:mod:`lot_rl.regularizer`).

Modules: :mod:`.data` (readers, batching, augmentation), :mod:`.models`, :mod:`.training` (the shared LoT
step and epoch loop), :mod:`.cv`, :mod:`.lm`. They are imported on demand, so importing this package is cheap.
"""
