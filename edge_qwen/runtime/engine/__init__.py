"""The step loop of one llama.cpp context: slots and their caches, admission, drafting in the batch
(and the draft model's own context), the decoder, the one compute thread, the host prompt cache."""
