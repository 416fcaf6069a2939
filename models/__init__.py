"""Model loading, Medusa heads and their training, the bundled default suite and its recipe.

Import from the modules (`specserve.models.loading`, ...): this package's own import stays light
so the command line can name the bundled suite without loading torch."""
