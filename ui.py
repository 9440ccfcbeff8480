"""Start the Gradio chat UI: ``python ui.py [--host 127.0.0.1] [--port 7860]`` (same as ``rag ui``)."""

from rag.cli import main

if __name__ == "__main__":
    main(["ui", *__import__("sys").argv[1:]])
