"""Engine side: GPU/model profiles (iteration time, utilisation), KV cache, and the discrete-event simulator."""
