"""The synthetic in-context world of the miniature experiment."""
