"""Vision and index: preprocessing, the TorchScript model and its loading, the Annoy index and labels."""
