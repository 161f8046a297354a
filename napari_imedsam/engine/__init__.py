"""Engine (no Qt): predictor, embedding cache, preprocessing, rendering math."""
