"""Causal-LM pieces of FedPT: the layer-drop emulator, proxy-tuning math, the black-box large LM."""
