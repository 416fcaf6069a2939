"""Model loading, the bundled default suite, and (later) Medusa heads and training recipes."""

from models.loading import LoadedModel, check_draft_compatible, load_model

__all__ = ["LoadedModel", "check_draft_compatible", "load_model"]
