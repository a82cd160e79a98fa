"""The export: `hf` writes the Hugging Face folder and checks it by logits, `gguf` the
llama.cpp file, `card` the model card."""
