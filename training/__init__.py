"""Offline side of DeepFood: fine-tune, export, embed, index, evaluate, upload."""
