"""editlens: the shared code of the book *Making Language Models Consistent*.

Each module holds what one chapter teaches; the notebooks call it. Start with
``model, tokenizer = editlens.load_model()``.
"""

import warnings

# TransformerLens imports tqdm.auto, which warns inside Jupyter when ipywidgets is absent. The book
# uses text progress bars on purpose (widget bars need JavaScript from a CDN, and the book is offline).
warnings.filterwarnings("ignore", message="IProgress not found")

from editlens import precision
from editlens.fingerprint import weights_fingerprint
from editlens.loading import EMBEDDED, ModelNotAvailableError, load_model
from editlens.seeding import seed_everything

__version__ = "0.1.0"

__all__ = ["EMBEDDED", "ModelNotAvailableError", "load_model", "precision", "seed_everything", "weights_fingerprint", "__version__"]
