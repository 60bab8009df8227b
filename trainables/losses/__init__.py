"""One loss per file (as RepDistiller's distiller_zoo)."""
