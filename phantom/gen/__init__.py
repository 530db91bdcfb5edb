"""Phantom's generative model of TLP traces: data, encoding, backbones, calibration, training, sampling, evaluation.

Kept apart the way nanoGPT keeps model, training and sampling apart:

* ``encoding``     a TLP record <-> F integer fields (tokens) <-> a normalised window tensor ("image");
* ``condition``    what a trace is conditioned on (scenario, workload knobs, link parameters);
* ``dataset``      captured traces -> compact arrays with a documented split, priors for calibration, fingerprint;
* ``backbones``    the generative models (enum + registry): image-style VAE, transformer, two baselines;
* ``calibrate``    the model-agnostic repair that turns any backbone's output into a legal, replayable trace;
* ``hostside``     the replay contract of docs/trace-format.md as a checker of a trace's host side;
* ``train``        the training loop (seeded, resumable, DDP on gloo under torchrun);
* ``sample``       streaming generation to ``.jsonl.gz`` / ``.npz`` (+ MAC sidecar) with flat memory;
* ``features``     the frozen trace classifier whose penultimate layer is the Frechet-distance feature space;
* ``evaluate``     fidelity, task metrics and protocol violations side by side, with PNG plots.

``phantom.gen`` imports torch lazily where it can: encoding, calibration and the host-side checker do not need it.
"""
