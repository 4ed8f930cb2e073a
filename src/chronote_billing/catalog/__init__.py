"""Plans, credit packs and the rate card: versioned product data shipped with the package."""
