"""Text in and out: the chat template, the streaming detokenizer, stop strings and the split of
reasoning from content."""
