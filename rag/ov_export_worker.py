"""Export EmbeddingGemma's Transformer module to ONNX; runs inside the separate export environment.

Usage: ``python ov_export_worker.py MODEL_DIR OUTPUT_DIR``. This file imports nothing from ``rag``:
the export environment holds only the pinned exporter stack (see ``rag.ov_export.EXPORT_REQUIREMENTS``),
whose transformers 4.x is the last line that torch-exports Gemma3 cleanly.
"""

import sys


def main() -> None:
    """Write ``model.onnx`` (inputs input_ids/attention_mask, output last_hidden_state) to OUTPUT_DIR."""
    model_dir, output_dir = sys.argv[1], sys.argv[2]
    from optimum.exporters.onnx import main_export

    main_export(model_dir, output=output_dir, task="feature-extraction", library_name="transformers",
                do_validation=False, no_post_process=True)


if __name__ == "__main__":
    main()
