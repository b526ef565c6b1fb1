"""Images and audio in prompts: reading and checking the parts, decoding them, fetching remote
ones safely, and placing mtmd's chunks in the token stream."""
